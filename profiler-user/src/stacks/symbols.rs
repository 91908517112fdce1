//! Symbolization of normalized frames with blazesym, cached per (file, offset).

use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{Input, Symbolized, Symbolizer, source::Elf, source::Source};
use serde::Serialize;

use super::Frame;

/// A frame with its symbol, as reports show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SymFrame {
    /// The return address as the process saw it.
    pub address: u64,
    /// The file mapped at the address.
    pub module: Option<String>,
    /// The function, demangled.
    pub function: Option<String>,
    /// The source file, when debug info has it.
    pub file: Option<String>,
    /// The source line of the call.
    pub line: Option<u32>,
}

/// Symbolizes frames, caching each (file, offset).
pub struct Symbols {
    symbolizer: Symbolizer,
    cache: HashMap<(Arc<Path>, u64), Resolved>,
}

#[derive(Clone, Default)]
struct Resolved {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    /// A symbolizer with an empty cache.
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }

    /// The symbols of a stack's frames.
    pub fn symbolize(&mut self, frames: &[Frame]) -> Vec<SymFrame> {
        frames.iter().map(|frame| self.frame(frame)).collect()
    }

    fn frame(&mut self, frame: &Frame) -> SymFrame {
        let resolved = match &frame.location {
            Some((path, offset)) => self.resolve(path, *offset),
            None => Resolved::default(),
        };
        SymFrame {
            address: frame.address,
            module: frame
                .location
                .as_ref()
                .map(|(path, _)| path.display().to_string()),
            function: resolved.function,
            file: resolved.file,
            line: resolved.line,
        }
    }

    fn resolve(&mut self, path: &Arc<Path>, offset: u64) -> Resolved {
        let key = (Arc::clone(path), offset);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        // A return address: look up the call instruction just before it.
        let lookup = offset.saturating_sub(1);
        let source = Source::Elf(Elf::new(path.to_path_buf()));
        let resolved = match self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(lookup))
        {
            Ok(Symbolized::Sym(sym)) => {
                let code = sym.code_info.as_deref();
                Resolved {
                    function: Some(sym.name.into_owned()),
                    file: code.map(|c| c.file.to_string_lossy().into_owned()),
                    line: code.and_then(|c| c.line),
                }
            }
            _ => Resolved::default(),
        };
        self.cache.insert(key, resolved.clone());
        resolved
    }
}
