//! Symbolization of normalized frames with blazesym, in a bounded cache.

use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer, source::Elf, source::Source};
use serde::{Deserialize, Serialize};

use super::{FileId, Frame, Location, MappedRange, Stack, read_build_id};

/// A frame with its symbol, as reports show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymFrame {
    /// The return address as the process saw it.
    pub address: u64,
    /// The file mapped at the address.
    pub module: Option<String>,
    /// The file's GNU build id, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The address's offset in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
    /// The function, demangled.
    pub function: Option<String>,
    /// The source file, when debug info has it.
    pub file: Option<String>,
    /// The source line of the call.
    pub line: Option<u32>,
    /// The mapping the address lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappedRange>,
    /// Calls inlined at the address, innermost first: the frames the
    /// compiler folded into `function`, which made the call at `line`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inlined: Vec<InlinedCall>,
}

/// A call inlined into a frame's function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlinedCall {
    /// The inlined function, demangled.
    pub function: String,
    /// The source file of the call it makes, when debug info has it.
    pub file: Option<String>,
    /// The source line of that call.
    pub line: Option<u32>,
}

impl SymFrame {
    /// The frame's calls as a stack shows them, innermost first: the
    /// inlined ones, then the function's own, each as (function, file, line).
    pub fn calls(&self) -> impl Iterator<Item = (Option<&str>, Option<&str>, Option<u32>)> {
        self.inlined
            .iter()
            .map(|call| {
                (
                    Some(call.function.as_str()),
                    call.file.as_deref(),
                    call.line,
                )
            })
            .chain([(self.function.as_deref(), self.file.as_deref(), self.line)])
    }
}

/// Frames resolved per (file, build id, offset) kept by default.
pub const DEFAULT_CACHE_FRAMES: usize = 65_536;

/// A location: the path shown, the build id, the file (two files may share
/// a path and lack a build id: a container's and the host's) and the offset.
type CacheKey = (Arc<Path>, Option<Arc<[u8]>>, Option<FileId>, u64);

/// Symbolizes frames, caching each location in a cache of bounded size.
///
/// The cache has two generations: lookups promote from the old one; when the
/// young one fills half the capacity it becomes the old one, and the blazesym
/// symbolizer (which keeps every parsed file) is replaced, so memory stays
/// bounded however many files and addresses a long-running daemon sees.
pub struct Symbols {
    symbolizer: Symbolizer,
    young: HashMap<CacheKey, Resolved>,
    old: HashMap<CacheKey, Resolved>,
    generation_size: usize,
}

#[derive(Clone, Default)]
struct Resolved {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    inlined: Vec<InlinedCall>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_FRAMES)
    }
}

impl Symbols {
    /// A symbolizer whose cache holds at most `capacity` frames (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            young: HashMap::new(),
            old: HashMap::new(),
            generation_size: (capacity / 2).max(1),
        }
    }

    /// The symbols of a stack's frames.
    pub fn symbolize(&mut self, stack: &Stack) -> Vec<SymFrame> {
        stack.frames.iter().map(|frame| self.frame(frame)).collect()
    }

    /// The symbols of each stack's frames, in order.
    pub fn symbolize_all(&mut self, stacks: &[Arc<Stack>]) -> Vec<Vec<SymFrame>> {
        stacks.iter().map(|stack| self.symbolize(stack)).collect()
    }

    /// Frames held in the cache.
    pub fn cached(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn frame(&mut self, frame: &Frame) -> SymFrame {
        let Some(location) = &frame.location else {
            return SymFrame {
                address: frame.address,
                module: None,
                build_id: None,
                file_offset: None,
                function: None,
                file: None,
                line: None,
                mapping: None,
                inlined: Vec::new(),
            };
        };
        let resolved = self.resolve(location);
        SymFrame {
            address: frame.address,
            module: Some(location.path.display().to_string()),
            build_id: location.build_id.as_deref().map(hex),
            file_offset: Some(location.offset),
            function: resolved.function,
            file: resolved.file,
            line: resolved.line,
            mapping: Some(location.mapping),
            inlined: resolved.inlined,
        }
    }

    fn resolve(&mut self, location: &Location) -> Resolved {
        let key = (
            Arc::clone(&location.path),
            location.build_id.clone(),
            location.file.as_ref().map(|file| file.id),
            location.offset,
        );
        if let Some(hit) = self.young.get(&key) {
            return hit.clone();
        }
        let resolved = match self.old.remove(&key) {
            Some(hit) => hit,
            None => self.lookup(location),
        };
        if self.young.len() >= self.generation_size {
            self.old = std::mem::take(&mut self.young);
            self.symbolizer = Symbolizer::new();
        }
        self.young.insert(key, resolved.clone());
        resolved
    }

    /// Symbols of `location` from the file the process mapped, held open;
    /// without it, from its path unless the file there is no longer the one
    /// the process mapped (another build id): then none.
    fn lookup(&self, location: &Location) -> Resolved {
        let path = match &location.file {
            Some(file) => file.path(),
            None if location.build_id.is_some()
                && read_build_id(&location.path) != location.build_id =>
            {
                return Resolved::default();
            }
            None => location.path.to_path_buf(),
        };
        // A return address: look up the call instruction just before it.
        let input = Input::FileOffset(location.offset.saturating_sub(1));
        let source = Source::Elf(Elf::new(path));
        match self.symbolizer.symbolize_single(&source, input) {
            Ok(Symbolized::Sym(sym)) => {
                let code = sym.code_info.as_deref();
                // blazesym lists inlined calls outermost first, each with
                // the place in it of the next call (the innermost's: the
                // address's own).
                let inlined = sym
                    .inlined
                    .iter()
                    .rev()
                    .map(|call| InlinedCall {
                        function: call.name.to_string(),
                        file: call.code_info.as_ref().map(source_file),
                        line: call.code_info.as_ref().and_then(|c| c.line),
                    })
                    .collect();
                Resolved {
                    function: Some(sym.name.to_string()),
                    file: code.map(source_file),
                    line: code.and_then(|c| c.line),
                    inlined,
                }
            }
            _ => Resolved::default(),
        }
    }
}

fn source_file(code: &CodeInfo<'_>) -> String {
    code.file.to_string_lossy().into_owned()
}

/// Bytes as lowercase hex, as `readelf -n` prints build ids.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::{StackStatus, normalize, parse_maps};

    /// A stack of this test binary's own code, normalized from its maps.
    fn own_stack(addresses: &[u64]) -> Stack {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let mut mappings = parse_maps(&maps);
        for m in &mut mappings {
            m.build_id = read_build_id(&m.path);
        }
        Stack {
            frames: addresses
                .iter()
                .map(|&address| Frame {
                    address,
                    location: normalize(&mappings, address),
                })
                .collect(),
            status: StackStatus::Full,
        }
    }

    fn here() -> u64 {
        own_stack as fn(&[u64]) -> Stack as usize as u64 + 1
    }

    #[test]
    fn symbolizes_own_code_with_its_build_id() {
        let stack = own_stack(&[here()]);
        let frame = &Symbols::default().symbolize(&stack)[0];
        let function = frame.function.as_deref().expect("symbolized");
        assert!(function.contains("own_stack"), "{function}");
        let build_id = frame
            .build_id
            .as_deref()
            .expect("the test binary has a build id");
        assert_eq!(build_id.len(), 40, "{build_id}");
    }

    #[test]
    fn a_rebuilt_file_is_not_symbolized_with_the_new_build() {
        let mut stack = own_stack(&[here()]);
        let location = stack.frames[0].location.as_mut().expect("normalized");
        location.build_id = Some(Arc::from(&[0u8; 20][..]));
        let frame = &Symbols::default().symbolize(&stack)[0];
        assert_eq!(frame.function, None);
        assert_eq!(frame.build_id.as_deref(), Some(&*"00".repeat(20)));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut symbols = Symbols::new(8);
        for i in 0..100 {
            symbols.symbolize(&own_stack(&[here() + i]));
            assert!(symbols.cached() <= 8, "{} cached", symbols.cached());
        }
        let again = symbols.symbolize(&own_stack(&[here()]));
        assert!(again[0].function.is_some());
    }
}
