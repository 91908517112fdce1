//! Profiles read by the real `go tool pprof` (Debian's golang-go, installed
//! by `cargo xtask setup`): its `-raw` dump parsed, and its other reports.

use std::{collections::HashMap, path::Path, process::Command};

/// `go tool pprof ARGS`, which must succeed; its standard output.
pub fn go_pprof(args: &[&str]) -> String {
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("run go tool pprof (cargo xtask setup installs golang-go)");
    assert!(
        output.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A profile as `go tool pprof -raw` prints it.
#[derive(Debug, Default)]
pub struct Profile {
    /// "space bytes" for a heap profile.
    pub period_type: String,
    pub period: String,
    /// As pprof prints it: `2026-12-03 21:34:49.446 +0000 UTC`.
    pub time: String,
    pub duration: Option<String>,
    /// `name/unit`, with `[dflt]` after the default one.
    pub sample_types: Vec<String>,
    pub samples: Vec<Sample>,
    pub locations: HashMap<u64, Location>,
    pub mappings: HashMap<u64, Mapping>,
    /// The location whose lines are being read.
    last_location: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Sample {
    pub values: Vec<i64>,
    /// Location ids, leaf first.
    pub locations: Vec<u64>,
    /// (key, value) as pprof prints them.
    pub labels: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Location {
    pub address: u64,
    pub mapping: u64,
    /// (function, file:line) innermost first: inlined calls, then the
    /// function they are inlined into.
    pub lines: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub file: String,
    pub build_id: String,
}

impl Profile {
    /// Reads the gzipped profile at `path` with `go tool pprof -raw`.
    pub fn read(path: &Path) -> Self {
        Self::parse(&go_pprof(&["-raw", path.to_str().expect("utf-8 path")]))
    }

    fn parse(raw: &str) -> Self {
        let mut profile = Profile::default();
        let mut section = "";
        for line in raw.lines() {
            if let Some((key, value)) = line.split_once(": ").filter(|_| section.is_empty()) {
                match key {
                    "PeriodType" => profile.period_type = value.to_owned(),
                    "Period" => profile.period = value.to_owned(),
                    "Time" => profile.time = value.to_owned(),
                    "Duration" => profile.duration = Some(value.to_owned()),
                    _ => {}
                }
                continue;
            }
            match line.trim_end() {
                "Samples:" | "Locations" | "Mappings" => {
                    section = line.trim_end();
                    continue;
                }
                "" => continue,
                _ => {}
            }
            match section {
                "Samples:" => profile.sample_line(line),
                "Locations" => profile.location_line(line),
                "Mappings" => profile.mapping_line(line),
                _ => {}
            }
        }
        profile
    }

    fn sample_line(&mut self, line: &str) {
        if self.sample_types.is_empty() {
            self.sample_types = line.split_whitespace().map(str::to_owned).collect();
        } else if let Some((values, locations)) = line
            .split_once(':')
            .filter(|(v, _)| v.split_whitespace().all(|n| n.parse::<i64>().is_ok()))
        {
            self.samples.push(Sample {
                values: numbers(values),
                locations: numbers(locations),
                labels: Vec::new(),
            });
        } else if let Some(sample) = self.samples.last_mut() {
            // Labels: `key:[value] key:[value]`.
            for label in line.split("] ") {
                if let Some((key, value)) = label.trim().split_once(":[") {
                    sample
                        .labels
                        .push((key.to_owned(), value.trim_end_matches(']').to_owned()));
                }
            }
        }
    }

    fn location_line(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some(id) = first.strip_suffix(':').and_then(|id| id.parse().ok()) {
            let address = hex(words.next().unwrap_or_default());
            let mapping = words
                .next()
                .and_then(|m| m.strip_prefix("M="))
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            let mut location = Location {
                address,
                mapping,
                lines: Vec::new(),
            };
            location.lines.extend(function_line(words));
            self.locations.insert(id, location);
            self.last_location = Some(id);
        } else if let Some(location) = self
            .last_location
            .and_then(|id| self.locations.get_mut(&id))
        {
            location
                .lines
                .extend(function_line(line.split_whitespace()));
        }
    }

    fn mapping_line(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let Some(id) = words
            .next()
            .and_then(|w| w.strip_suffix(':'))
            .and_then(|w| w.parse().ok())
        else {
            return;
        };
        let range: Vec<u64> = words
            .next()
            .unwrap_or_default()
            .split('/')
            .map(hex)
            .collect();
        let file = words.next().unwrap_or_default().to_owned();
        let build_id = words
            .next()
            .filter(|w| !w.starts_with('['))
            .unwrap_or_default()
            .to_owned();
        self.mappings.insert(
            id,
            Mapping {
                start: range.first().copied().unwrap_or(0),
                limit: range.get(1).copied().unwrap_or(0),
                offset: range.get(2).copied().unwrap_or(0),
                file,
                build_id,
            },
        );
    }

    /// The function names of a sample's stack, innermost first, inlined
    /// calls included.
    pub fn functions(&self, sample: &Sample) -> Vec<String> {
        sample
            .locations
            .iter()
            .flat_map(|id| &self.locations[id].lines)
            .map(|(function, _)| function.clone())
            .collect()
    }

    /// The mapping of a sample's leaf frame.
    pub fn leaf_mapping(&self, sample: &Sample) -> Option<&Mapping> {
        let location = self.locations.get(sample.locations.first()?)?;
        self.mappings.get(&location.mapping)
    }

    /// The index of the sample type `name` in each sample's values.
    pub fn value_index(&self, name: &str) -> usize {
        self.sample_types
            .iter()
            .position(|t| t.split('/').next() == Some(name))
            .unwrap_or_else(|| panic!("no sample type {name}: {:?}", self.sample_types))
    }

    /// The sample whose leaf function is `function`.
    pub fn sample_at(&self, function: &str) -> &Sample {
        self.samples
            .iter()
            .find(|s| self.functions(s).first().map(String::as_str) == Some(function))
            .unwrap_or_else(|| panic!("no sample at {function}: {self:?}"))
    }
}

/// The (function, place) after a location's address and mapping: pprof
/// writes `function file:line s=0`.
fn function_line<'a>(words: impl Iterator<Item = &'a str>) -> Option<(String, String)> {
    let words: Vec<&str> = words.filter(|w| !w.starts_with("s=")).collect();
    let (place, function) = words.split_last()?;
    if function.is_empty() {
        return Some(((*place).to_owned(), String::new()));
    }
    Some((function.join(" "), (*place).to_owned()))
}

fn numbers<T: std::str::FromStr>(text: &str) -> Vec<T> {
    text.split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or(0)
}
