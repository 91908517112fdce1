//! The gzipped pprof profile (profile.proto) of a report's sites, as Go
//! writes a heap profile: sample types alloc_objects, alloc_space,
//! inuse_objects and inuse_space (the last, shown by default), period type
//! space/bytes, the time it was taken, mappings with their ranges, file
//! offsets and build ids (a backend can symbolize again), one location per
//! address of a mapping with its inlined calls, and `pid`/`comm` labels on
//! each sample. Read by `go tool pprof` (`-base` diffs two), Pyroscope and
//! Parca.

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, SystemTime},
};

use flate2::{Compression, write::GzEncoder};

use super::{ProcessReport, SiteReport};
use crate::stacks::SymFrame;

/// The sample types, in the order of each sample's values: Go's.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// When a profile was taken, and over how long its figures were gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileTime {
    /// When it was taken.
    pub taken: SystemTime,
    /// How long the figures were gathered, when known.
    pub duration: Option<Duration>,
}

/// Encodes every process's sites as one gzipped profile.
pub fn render_pprof(processes: &[ProcessReport], time: ProfileTime) -> std::io::Result<Vec<u8>> {
    let mut profile = ProfileBuilder::default();
    for process in processes {
        for site in &process.sites {
            profile.add_site(process, site);
        }
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode(time))?;
    gz.finish()
}

/// A mapping as a profile keys it: one process's mapping of one file.
#[derive(Clone, PartialEq, Eq, Hash)]
struct MappingKey {
    pid: u32,
    file: String,
    build_id: String,
    start: u64,
}

#[derive(Default)]
struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    /// (name, file name) string indexes, by id - 1.
    functions: Vec<(i64, i64)>,
    function_ids: HashMap<(i64, i64), u64>,
    /// The encoded mappings, by id - 1.
    mappings: Vec<Vec<u8>>,
    mapping_ids: HashMap<MappingKey, u64>,
    /// The encoded locations, by id - 1.
    locations: Vec<Vec<u8>>,
    /// By (process, mapping id or 0, address).
    location_ids: HashMap<(u32, u64, u64), u64>,
    samples: Vec<Vec<u8>>,
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

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        self.functions.push(key);
        let id = self.functions.len() as u64;
        self.function_ids.insert(key, id);
        id
    }

    /// The mapping of the frame's file in process `pid`; 0 (none) when the
    /// file is unknown.
    fn mapping(&mut self, pid: u32, frame: &SymFrame) -> u64 {
        let Some(file) = &frame.module else {
            return 0;
        };
        let range = frame.mapping;
        let key = MappingKey {
            pid,
            file: file.clone(),
            build_id: frame.build_id.clone().unwrap_or_default(),
            start: range.map_or(0, |r| r.start),
        };
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let mut mapping = Message::default();
        mapping.int(1, id);
        if let Some(range) = range {
            mapping.int(2, range.start);
            mapping.int(3, range.limit);
            mapping.int(4, range.file_offset);
        }
        mapping.int(5, self.string(&key.file) as u64);
        mapping.int(6, self.string(&key.build_id) as u64);
        // Symbolized already: functions, file names, lines, inlined calls.
        for field in 7..=10 {
            mapping.int(field, 1);
        }
        self.mappings.push(mapping.0);
        self.mapping_ids.insert(key, id);
        id
    }

    fn location(&mut self, pid: u32, frame: &SymFrame) -> u64 {
        let mapping = self.mapping(pid, frame);
        let key = (pid, mapping, frame.address);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let mut location = Message::default();
        location.int(1, id);
        location.int(2, mapping);
        location.int(3, frame.address);
        let fallback_name = format!("0x{:x}", frame.address);
        // Innermost first: the last line is the function the others were
        // inlined into.
        for (function, file, line) in frame.calls() {
            let file = file.or(frame.module.as_deref()).unwrap_or_default();
            let function = self.function(function.unwrap_or(&fallback_name), file);
            let mut entry = Message::default();
            entry.int(1, function);
            entry.int(2, u64::from(line.unwrap_or(0)));
            location.bytes(4, &entry.0);
        }
        self.locations.push(location.0);
        self.location_ids.insert(key, id);
        id
    }

    fn add_site(&mut self, process: &ProcessReport, site: &SiteReport) {
        let locations: Vec<u64> = site
            .stack
            .iter()
            .map(|frame| self.location(process.pid, frame))
            .collect();
        let values = [
            site.allocs,
            site.bytes_allocated,
            site.live_blocks,
            site.live_bytes,
        ]
        .map(|v| v.min(i64::MAX as u64));
        let mut sample = Message::default();
        sample.packed(1, &locations);
        sample.packed(2, &values);
        // As perf's converter labels them: the pid a number, the command
        // name a string.
        let mut pid = Message::default();
        pid.int(1, self.string("pid") as u64);
        pid.int(3, u64::from(process.pid));
        sample.bytes(3, &pid.0);
        if let Some(comm) = &process.comm {
            let mut label = Message::default();
            label.int(1, self.string("comm") as u64);
            label.int(2, self.string(comm) as u64);
            sample.bytes(3, &label.0);
        }
        self.samples.push(sample.0);
    }

    fn encode(mut self, time: ProfileTime) -> Vec<u8> {
        let types: Vec<Vec<u8>> = SAMPLE_TYPES
            .iter()
            .map(|&(kind, unit)| self.value_type(kind, unit))
            .collect();
        let period_type = self.value_type("space", "bytes");
        let default_type = self.string(SAMPLE_TYPES[3].0);
        let mut out = Message::default();
        for value_type in &types {
            out.bytes(1, value_type);
        }
        for sample in &self.samples {
            out.bytes(2, sample);
        }
        for mapping in &self.mappings {
            out.bytes(3, mapping);
        }
        for location in &self.locations {
            out.bytes(4, location);
        }
        for (id, &(name, file)) in self.functions.iter().enumerate() {
            let mut function = Message::default();
            function.int(1, id as u64 + 1);
            function.int(2, name as u64);
            function.int(3, name as u64);
            function.int(4, file as u64);
            out.bytes(5, &function.0);
        }
        for s in &self.strings {
            out.bytes(6, s.as_bytes());
        }
        let since_epoch = time
            .taken
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        out.int(9, nanos(since_epoch));
        if let Some(duration) = time.duration {
            out.int(10, nanos(duration));
        }
        out.bytes(11, &period_type);
        // Every allocation is counted: a sampling period of one byte.
        out.int(12, 1);
        out.int(14, default_type as u64);
        out.0
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> Vec<u8> {
        let mut value_type = Message::default();
        value_type.int(1, self.string(kind) as u64);
        value_type.int(2, self.string(unit) as u64);
        value_type.0
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A protobuf message being encoded.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    /// A varint field.
    fn int(&mut self, field: u64, value: u64) {
        varint(field << 3, &mut self.0);
        varint(value, &mut self.0);
    }

    /// A length-delimited field: bytes, a string or a message.
    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        varint((field << 3) | 2, &mut self.0);
        varint(bytes.len() as u64, &mut self.0);
        self.0.extend_from_slice(bytes);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u64, values: &[u64]) {
        let mut packed = Vec::new();
        for &v in values {
            varint(v, &mut packed);
        }
        self.bytes(field, &packed);
    }
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        stacks::{InlinedCall, MappedRange, StackStatus},
        tracker::SiteStats,
    };

    fn frame(address: u64, start: u64, inlined: &[&str]) -> SymFrame {
        SymFrame {
            address,
            module: Some("/usr/bin/app".to_owned()),
            build_id: Some("ab".to_owned()),
            file_offset: Some(address - start),
            function: Some("outer".to_owned()),
            file: Some("app.c".to_owned()),
            line: Some(7),
            mapping: Some(MappedRange {
                start,
                limit: start + 0x1000,
                file_offset: 0,
            }),
            inlined: inlined
                .iter()
                .map(|&function| InlinedCall {
                    function: function.to_owned(),
                    file: Some("app.h".to_owned()),
                    line: Some(3),
                })
                .collect(),
        }
    }

    fn process(pid: u32, stack: Vec<SymFrame>) -> ProcessReport {
        let stats = SiteStats {
            live_bytes: 100,
            live_blocks: 1,
            allocs: 2,
            bytes_allocated: 200,
            site: crate::events::RawSite { stack: 1 },
        };
        ProcessReport {
            comm: Some(format!("app{pid}")),
            sites: vec![SiteReport::new(&stats, stack, StackStatus::Full)],
            ..ProcessReport::summary(pid, &Default::default(), true)
        }
    }

    #[test]
    fn processes_keep_their_own_mappings_and_locations_and_inlined_calls_their_lines() {
        let mut builder = ProfileBuilder::default();
        // One address in two processes, which map the file at it alike.
        let a = process(1, vec![frame(0x1010, 0x1000, &["inner", "innermost"])]);
        let b = process(2, vec![frame(0x1010, 0x1000, &[])]);
        for p in [&a, &b] {
            builder.add_site(p, &p.sites[0]);
        }
        assert_eq!(builder.mappings.len(), 2, "a mapping per process");
        assert_eq!(
            builder.locations.len(),
            2,
            "a location per mapping and address"
        );
        assert_eq!(builder.functions.len(), 3, "outer, inner, innermost");
        for label in ["pid", "comm", "app1", "app2"] {
            assert!(builder.string_ids.contains_key(label), "{label}");
        }
        let lines = |location: &[u8]| fields(location).filter(|&f| f == 4).count();
        assert_eq!(
            (lines(&builder.locations[0]), lines(&builder.locations[1])),
            (3, 1),
            "two inlined calls and the function they are in"
        );
    }

    #[test]
    fn a_profile_written_reads_back_as_the_report() {
        let site = SiteReport {
            live_bytes: 300,
            live_blocks: 3,
            allocs: 5,
            bytes_allocated: 500,
            ..SiteReport::with_stack(vec![
                frame(0x1010, 0x1000, &["inner"]),
                frame(0x1100, 0x1000, &[]),
            ])
        };
        let mut small = site.clone();
        small.stack.truncate(1);
        (small.live_bytes, small.live_blocks) = (10, 1);
        let written = ProcessReport {
            comm: Some("app".to_owned()),
            sites: vec![site, small],
            ..ProcessReport::summary(77, &Default::default(), false)
        };
        let time = ProfileTime {
            taken: SystemTime::now(),
            duration: None,
        };
        let profile = render_pprof(std::slice::from_ref(&written), time).expect("renders");
        let read = crate::report::read_pprof(&profile).expect("reads");
        assert_eq!(read.pid, 77);
        assert_eq!((read.in_use_bytes, read.in_use_blocks), (310, 4));
        for (read, written) in read.sites.iter().zip(&written.sites) {
            let figures =
                |s: &SiteReport| (s.live_bytes, s.live_blocks, s.allocs, s.bytes_allocated);
            assert_eq!(figures(read), figures(written));
            assert_eq!(read.stack, written.stack);
        }
    }

    /// The field numbers of a message's fields, in order.
    fn fields(mut message: &[u8]) -> impl Iterator<Item = u64> + '_ {
        std::iter::from_fn(move || {
            let tag = read_varint(&mut message)?;
            match tag & 7 {
                0 => drop(read_varint(&mut message)?),
                2 => {
                    let len = read_varint(&mut message)? as usize;
                    message = message.get(len..)?;
                }
                _ => return None,
            }
            Some(tag >> 3)
        })
    }

    fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        let mut message = Message::default();
        message.int(1, 1);
        message.bytes(6, b"ab");
        message.packed(1, &[1, 300]);
        assert_eq!(
            message.0,
            [0x08, 0x01, 0x32, 2, b'a', b'b', 0x0a, 3, 1, 0xac, 0x02]
        );
    }
}
