//! A hand-written decoder of the gzipped profile.proto heapwatch writes:
//! enough of it to check what the tests assert, independent of the encoder.

/// The parts of a gzipped profile.proto the tests check, decoded by hand.
pub struct Profile {
    pub strings: Vec<String>,
    sample_type_ids: Vec<u64>,
    /// (location ids, values)
    pub samples: Vec<(Vec<u64>, Vec<i64>)>,
    /// location id -> function id of its first line
    location_functions: std::collections::HashMap<u64, u64>,
    /// function id -> name's string index
    function_names: std::collections::HashMap<u64, u64>,
    /// (file name, build id) of each mapping, by id
    pub mappings: std::collections::HashMap<u64, (String, String)>,
    /// location id -> mapping id
    location_mappings: std::collections::HashMap<u64, u64>,
}

impl Profile {
    pub fn decode(gzipped: &[u8]) -> Self {
        use std::io::Read;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut bytes)
            .expect("gzip");
        let mut profile = Profile {
            strings: Vec::new(),
            sample_type_ids: Vec::new(),
            samples: Vec::new(),
            location_functions: Default::default(),
            function_names: Default::default(),
            mappings: Default::default(),
            location_mappings: Default::default(),
        };
        let mut raw_mappings = Vec::new();
        for (field, value) in fields(&bytes) {
            match (field, value) {
                (1, Field::Bytes(b)) => profile.sample_type_ids.push(int(&b, 1)),
                (2, Field::Bytes(b)) => profile.samples.push((
                    packed(&b, 1),
                    packed(&b, 2).into_iter().map(|v| v as i64).collect(),
                )),
                (3, Field::Bytes(b)) => raw_mappings.push((int(&b, 1), int(&b, 5), int(&b, 6))),
                (4, Field::Bytes(b)) => {
                    profile.location_mappings.insert(int(&b, 1), int(&b, 2));
                    let line = fields(&b)
                        .into_iter()
                        .find_map(|(f, v)| match (f, v) {
                            (4, Field::Bytes(line)) => Some(int(&line, 1)),
                            _ => None,
                        })
                        .unwrap_or(0);
                    profile.location_functions.insert(int(&b, 1), line);
                }
                (5, Field::Bytes(b)) => {
                    profile.function_names.insert(int(&b, 1), int(&b, 2));
                }
                (6, Field::Bytes(b)) => profile.strings.push(String::from_utf8(b).expect("utf-8")),
                _ => {}
            }
        }
        for (id, file, build_id) in raw_mappings {
            let name = |i: u64| profile.strings[i as usize].clone();
            profile.mappings.insert(id, (name(file), name(build_id)));
        }
        profile
    }

    /// The function names of a sample's stack, leaf first.
    pub fn stack_functions(&self, locations: &[u64]) -> Vec<String> {
        locations
            .iter()
            .map(|location| {
                self.location_functions
                    .get(location)
                    .and_then(|f| self.function_names.get(f))
                    .map_or_else(String::new, |&s| self.strings[s as usize].clone())
            })
            .collect()
    }

    /// The (file, build id) of the mapping of a sample's leaf frame.
    pub fn leaf_mapping(&self, locations: &[u64]) -> Option<&(String, String)> {
        let mapping = self.location_mappings.get(locations.first()?)?;
        self.mappings.get(mapping)
    }

    pub fn sample_types(&self) -> Vec<&str> {
        self.sample_type_ids
            .iter()
            .map(|&i| self.strings[i as usize].as_str())
            .collect()
    }

    /// The name index of the leaf frame's function.
    pub fn leaf_function(&self, locations: &[u64]) -> Option<u64> {
        let function = self.location_functions.get(locations.first()?)?;
        self.function_names.get(function).copied()
    }
}

enum Field {
    Int(u64),
    Bytes(Vec<u8>),
}

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte < 0x80 {
            return value;
        }
    }
}

fn fields(bytes: &[u8]) -> Vec<(u64, Field)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let field = match key & 7 {
            0 => Field::Int(varint(bytes, &mut at)),
            2 => {
                let len = varint(bytes, &mut at) as usize;
                at += len;
                Field::Bytes(bytes[at - len..at].to_vec())
            }
            other => panic!("unexpected wire type {other}"),
        };
        out.push((key >> 3, field));
    }
    out
}

fn int(message: &[u8], wanted: u64) -> u64 {
    fields(message)
        .into_iter()
        .find_map(|(f, v)| match (f, v) {
            (f, Field::Int(v)) if f == wanted => Some(v),
            _ => None,
        })
        .unwrap_or(0)
}

fn packed(message: &[u8], wanted: u64) -> Vec<u64> {
    let mut values = Vec::new();
    for (f, v) in fields(message) {
        if let (true, Field::Bytes(b)) = (f == wanted, v) {
            let mut at = 0;
            while at < b.len() {
                values.push(varint(&b, &mut at));
            }
        }
    }
    values
}
