//! Reading a pprof profile back into a process report, for `snapshot
//! --base` and `--from`: heapwatch's own, or any heap profile with
//! heapwatch's sample types (Go's names), gzipped or not.

use std::{collections::HashMap, io::Read};

use flate2::read::GzDecoder;

use super::{ProcessReport, SiteReport};
use crate::stacks::{InlinedCall, MappedRange, SymFrame};

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// Not gzip, or gzip of nothing decodable.
    #[error("it is not a pprof profile: {0}")]
    Malformed(&'static str),
    /// The gzip stream is broken.
    #[error("its gzip stream is broken: {0}")]
    Gzip(#[source] std::io::Error),
    /// A sample type the sites need is missing.
    #[error("it has no {0} sample type: not a heap profile")]
    NoSampleType(&'static str),
}

/// The report of the processes in a pprof profile, as one: the pid is the
/// first sample's `pid` label (0 when none has one).
pub fn read_pprof(bytes: &[u8]) -> Result<ProcessReport, PprofError> {
    let mut raw = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(PprofError::Gzip)?;
    } else {
        raw.extend_from_slice(bytes);
    }
    Profile::decode(&raw)?.report()
}

#[derive(Default)]
struct Profile {
    sample_types: Vec<i64>,
    samples: Vec<Sample>,
    mappings: HashMap<u64, Mapping>,
    locations: HashMap<u64, Location>,
    functions: HashMap<u64, (i64, i64)>,
    strings: Vec<String>,
}

#[derive(Default)]
struct Sample {
    locations: Vec<u64>,
    values: Vec<i64>,
    pid: Option<u32>,
}

#[derive(Default)]
struct Mapping {
    start: u64,
    limit: u64,
    offset: u64,
    file: i64,
    build_id: i64,
}

#[derive(Default)]
struct Location {
    mapping: u64,
    address: u64,
    /// (function id, line), innermost first.
    lines: Vec<(u64, i64)>,
}

impl Profile {
    fn decode(bytes: &[u8]) -> Result<Self, PprofError> {
        let mut profile = Self::default();
        let mut labels: Vec<Vec<(i64, i64)>> = Vec::new();
        for field in Fields(bytes) {
            let (number, value) = field?;
            match (number, value) {
                (1, Value::Bytes(b)) => profile.sample_types.push(int_field(b, 1)? as i64),
                (2, Value::Bytes(b)) => {
                    let (sample, sample_labels) = decode_sample(b)?;
                    profile.samples.push(sample);
                    labels.push(sample_labels);
                }
                (3, Value::Bytes(b)) => {
                    let mapping = Mapping {
                        start: int_field(b, 2)?,
                        limit: int_field(b, 3)?,
                        offset: int_field(b, 4)?,
                        file: int_field(b, 5)? as i64,
                        build_id: int_field(b, 6)? as i64,
                    };
                    profile.mappings.insert(int_field(b, 1)?, mapping);
                }
                (4, Value::Bytes(b)) => {
                    let location = decode_location(b)?;
                    profile.locations.insert(int_field(b, 1)?, location);
                }
                (5, Value::Bytes(b)) => {
                    let function = (int_field(b, 2)? as i64, int_field(b, 4)? as i64);
                    profile.functions.insert(int_field(b, 1)?, function);
                }
                (6, Value::Bytes(b)) => profile
                    .strings
                    .push(String::from_utf8_lossy(b).into_owned()),
                _ => {}
            }
        }
        if profile.strings.is_empty() {
            return Err(PprofError::Malformed("no string table"));
        }
        for (sample, labels) in profile.samples.iter_mut().zip(labels) {
            sample.pid = labels
                .iter()
                .find(|&&(key, _)| {
                    profile.strings.get(key as usize).map(String::as_str) == Some("pid")
                })
                .and_then(|&(_, num)| u32::try_from(num).ok());
        }
        Ok(profile)
    }

    fn string(&self, index: i64) -> &str {
        self.strings.get(index as usize).map_or("", String::as_str)
    }

    fn value_index(&self, name: &'static str) -> Result<usize, PprofError> {
        self.sample_types
            .iter()
            .position(|&t| self.string(t) == name)
            .ok_or(PprofError::NoSampleType(name))
    }

    fn report(&self) -> Result<ProcessReport, PprofError> {
        let [inuse_bytes, inuse_blocks, allocs, allocated] = [
            "inuse_space",
            "inuse_objects",
            "alloc_objects",
            "alloc_space",
        ]
        .map(|name| self.value_index(name));
        let (inuse_bytes, inuse_blocks) = (inuse_bytes?, inuse_blocks?);
        let value = |sample: &Sample, index: usize| {
            u64::try_from(sample.values.get(index).copied().unwrap_or(0)).unwrap_or(0)
        };
        let mut report = ProcessReport::summary(
            self.samples.iter().find_map(|s| s.pid).unwrap_or(0),
            &Default::default(),
            false,
        );
        for sample in &self.samples {
            let live_bytes = value(sample, inuse_bytes);
            if live_bytes == 0 {
                continue;
            }
            let stack = sample.locations.iter().map(|id| self.frame(*id)).collect();
            let site = SiteReport {
                live_bytes,
                live_blocks: value(sample, inuse_blocks),
                allocs: allocs.as_ref().map_or(0, |&i| value(sample, i)),
                bytes_allocated: allocated.as_ref().map_or(0, |&i| value(sample, i)),
                ..SiteReport::with_stack(stack)
            };
            // A file's figures, summed: saturating, whatever it says.
            report.in_use_bytes = report.in_use_bytes.saturating_add(site.live_bytes);
            report.in_use_blocks = report.in_use_blocks.saturating_add(site.live_blocks);
            report.allocs = report.allocs.saturating_add(site.allocs);
            report.bytes_allocated = report.bytes_allocated.saturating_add(site.bytes_allocated);
            report.sites.push(site);
        }
        report
            .sites
            .sort_by_key(|site| std::cmp::Reverse(site.live_bytes));
        Ok(report)
    }

    /// A location as a report's frame: its last line is the function, the
    /// others the calls inlined into it.
    fn frame(&self, id: u64) -> SymFrame {
        let location = self.locations.get(&id);
        let mapping = location.and_then(|l| self.mappings.get(&l.mapping));
        let address = location.map_or(0, |l| l.address);
        let call = |&(function, line): &(u64, i64)| {
            let (name, file) = self.functions.get(&function).copied().unwrap_or((0, 0));
            (
                self.string(name).to_owned(),
                Some(self.string(file).to_owned()).filter(|f| !f.is_empty()),
                u32::try_from(line).ok().filter(|&l| l > 0),
            )
        };
        let mut calls: Vec<(String, Option<String>, Option<u32>)> = location
            .map(|l| l.lines.iter().map(call).collect())
            .unwrap_or_default();
        let (function, file, line) = calls.pop().unwrap_or_default();
        SymFrame {
            address,
            module: mapping.map(|m| self.string(m.file).to_owned()),
            build_id: mapping
                .map(|m| self.string(m.build_id).to_owned())
                .filter(|id| !id.is_empty()),
            file_offset: mapping.map(|m| address.wrapping_sub(m.start).wrapping_add(m.offset)),
            function: Some(function).filter(|f| !f.is_empty()),
            file,
            line,
            mapping: mapping.map(|m| MappedRange {
                start: m.start,
                limit: m.limit,
                file_offset: m.offset,
            }),
            inlined: calls
                .into_iter()
                .map(|(function, file, line)| InlinedCall {
                    function,
                    file,
                    line,
                })
                .collect(),
        }
    }
}

fn decode_sample(bytes: &[u8]) -> Result<(Sample, Vec<(i64, i64)>), PprofError> {
    let mut sample = Sample::default();
    let mut labels = Vec::new();
    for field in Fields(bytes) {
        match field? {
            (1, value) => sample.locations.extend(value.varints()?),
            (2, value) => sample
                .values
                .extend(value.varints()?.into_iter().map(|v| v as i64)),
            (3, Value::Bytes(label)) => {
                labels.push((int_field(label, 1)? as i64, int_field(label, 3)? as i64));
            }
            _ => {}
        }
    }
    Ok((sample, labels))
}

fn decode_location(bytes: &[u8]) -> Result<Location, PprofError> {
    let mut location = Location {
        mapping: int_field(bytes, 2)?,
        address: int_field(bytes, 3)?,
        lines: Vec::new(),
    };
    for field in Fields(bytes) {
        if let (4, Value::Bytes(line)) = field? {
            location
                .lines
                .push((int_field(line, 1)?, int_field(line, 2)? as i64));
        }
    }
    Ok(location)
}

/// A field's value on the wire.
enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    /// The numbers of a repeated varint field, packed or one.
    fn varints(&self) -> Result<Vec<u64>, PprofError> {
        match *self {
            Self::Int(value) => Ok(vec![value]),
            Self::Bytes(mut packed) => {
                let mut values = Vec::new();
                while !packed.is_empty() {
                    values.push(varint(&mut packed)?);
                }
                Ok(values)
            }
        }
    }
}

/// The fields of a message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), PprofError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u64, Value<'a>), PprofError> {
        let tag = varint(&mut self.0)?;
        let value = match tag & 7 {
            0 => Value::Int(varint(&mut self.0)?),
            1 => Value::Bytes(self.take(8)?),
            2 => {
                let len = usize::try_from(varint(&mut self.0)?)
                    .map_err(|_| PprofError::Malformed("a field longer than memory"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Bytes(self.take(4)?),
            _ => return Err(PprofError::Malformed("an unknown wire type")),
        };
        Ok((tag >> 3, value))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], PprofError> {
        if len > self.0.len() {
            return Err(PprofError::Malformed("a field past the end"));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }
}

/// The last varint field `number` of a message, 0 when absent.
fn int_field(message: &[u8], number: u64) -> Result<u64, PprofError> {
    let mut found = 0;
    for field in Fields(message) {
        if let (n, Value::Int(value)) = field?
            && n == number
        {
            found = value;
        }
    }
    Ok(found)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, PprofError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(PprofError::Malformed("a number cut short"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(PprofError::Malformed("a number of more than 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_heap_profile_is_refused() {
        for bytes in [
            &b""[..],
            b"\x1f\x8b\x08garbage",
            b"\xff\xff\xff",
            b"\x0a\x05ab",
        ] {
            assert!(read_pprof(bytes).is_err(), "{bytes:?}");
        }
    }
}
