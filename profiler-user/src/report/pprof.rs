//! The gzipped pprof profile (profile.proto) of a report's sites: sample
//! types inuse_space, inuse_objects, alloc_space, alloc_objects, readable by
//! `go tool pprof`, Pyroscope and Parca.

use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};

use super::{ProcessReport, SiteReport};
use crate::stacks::SymFrame;

/// The sample types, in the order of each sample's values.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("inuse_space", "bytes"),
    ("inuse_objects", "count"),
    ("alloc_space", "bytes"),
    ("alloc_objects", "count"),
];

/// Encodes every process's sites as one gzipped profile.
pub fn render_pprof(processes: &[ProcessReport]) -> std::io::Result<Vec<u8>> {
    let mut profile = ProfileBuilder::default();
    for process in processes {
        for site in &process.sites {
            profile.add_site(site);
        }
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode())?;
    gz.finish()
}

#[derive(Default)]
struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<(u64, i64, i64)>,
    function_ids: HashMap<(String, String), u64>,
    /// (id, filename, build id) string indexes
    mappings: Vec<(u64, i64, i64)>,
    mapping_ids: HashMap<(String, String), u64>,
    /// (id, mapping id or 0, address, function id, line)
    locations: Vec<(u64, u64, u64, u64, i64)>,
    location_ids: HashMap<u64, u64>,
    samples: Vec<(Vec<u64>, [i64; 4])>,
}

impl ProfileBuilder {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn function(&mut self, frame: &SymFrame) -> u64 {
        let name = frame
            .function
            .clone()
            .unwrap_or_else(|| format!("0x{:x}", frame.address));
        let file = frame
            .file
            .clone()
            .or_else(|| frame.module.clone())
            .unwrap_or_default();
        if let Some(&id) = self.function_ids.get(&(name.clone(), file.clone())) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let (name_id, file_id) = (self.string(&name), self.string(&file));
        self.functions.push((id, name_id, file_id));
        self.function_ids.insert((name, file), id);
        id
    }

    /// The mapping of the frame's file and build id; 0 (none) when the file is unknown.
    fn mapping(&mut self, frame: &SymFrame) -> u64 {
        let Some(file) = frame.module.clone() else {
            return 0;
        };
        let build_id = frame.build_id.clone().unwrap_or_default();
        let key = (file, build_id);
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let (file_id, build_id_id) = (self.string(&key.0), self.string(&key.1));
        self.mappings.push((id, file_id, build_id_id));
        self.mapping_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &SymFrame) -> u64 {
        if let Some(&id) = self.location_ids.get(&frame.address) {
            return id;
        }
        let function = self.function(frame);
        let mapping = self.mapping(frame);
        let id = self.locations.len() as u64 + 1;
        let line = i64::from(frame.line.unwrap_or(0));
        self.locations
            .push((id, mapping, frame.address, function, line));
        self.location_ids.insert(frame.address, id);
        id
    }

    fn add_site(&mut self, site: &SiteReport) {
        let locations = site.stack.iter().map(|f| self.location(f)).collect();
        let values = [
            site.live_bytes,
            site.live_blocks,
            site.bytes_allocated,
            site.allocs,
        ]
        .map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.samples.push((locations, values));
    }

    fn encode(mut self) -> Vec<u8> {
        let types: Vec<(i64, i64)> = SAMPLE_TYPES
            .iter()
            .map(|(kind, unit)| (self.string(kind), self.string(unit)))
            .collect();
        let mut out = Vec::new();
        for (kind, unit) in &types {
            let value_type = [field_int(1, *kind as u64), field_int(2, *unit as u64)].concat();
            out.extend(field_bytes(1, &value_type));
        }
        for (locations, values) in &self.samples {
            let values: Vec<u64> = values.iter().map(|&v| v as u64).collect();
            let sample = [field_packed(1, locations), field_packed(2, &values)].concat();
            out.extend(field_bytes(2, &sample));
        }
        for &(id, file, build_id) in &self.mappings {
            // Symbolized already: has_functions, has_filenames, has_line_numbers.
            let mapping = [
                field_int(1, id),
                field_int(5, file as u64),
                field_int(6, build_id as u64),
                field_int(7, 1),
                field_int(8, 1),
                field_int(9, 1),
            ]
            .concat();
            out.extend(field_bytes(3, &mapping));
        }
        for &(id, mapping, address, function, line) in &self.locations {
            let line = [field_int(1, function), field_int(2, line as u64)].concat();
            let location = [
                field_int(1, id),
                field_int(2, mapping),
                field_int(3, address),
                field_bytes(4, &line),
            ]
            .concat();
            out.extend(field_bytes(4, &location));
        }
        for &(id, name, file) in &self.functions {
            let function = [
                field_int(1, id),
                field_int(2, name as u64),
                field_int(3, name as u64),
                field_int(4, file as u64),
            ]
            .concat();
            out.extend(field_bytes(5, &function));
        }
        for s in &self.strings {
            out.extend(field_bytes(6, s.as_bytes()));
        }
        out.extend(field_int(14, types[0].0 as u64));
        out
    }
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn field_int(field: u64, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(value, &mut out);
    out
}

fn field_bytes(field: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn field_packed(field: u64, values: &[u64]) -> Vec<u8> {
    let mut packed = Vec::new();
    for &v in values {
        varint(v, &mut packed);
    }
    field_bytes(field, &packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(field_int(1, 1), [0x08, 0x01]);
        assert_eq!(field_bytes(6, b"ab"), [0x32, 2, b'a', b'b']);
        assert_eq!(field_packed(1, &[1, 300]), [0x0a, 3, 1, 0xac, 0x02]);
    }
}
