//! What grew between two snapshots of a process (`snapshot --base`): each
//! site of the newer matched with the older's by its stack's calls, which
//! stay the same across runs and machines where addresses do not.

use std::collections::HashMap;

use super::{ProcessReport, SiteReport};

/// A site as two snapshots both know it: each call of its stack, innermost
/// first, by function and line (by file and offset where unsymbolized).
type SiteKey = Vec<(String, Option<u32>)>;

fn key(site: &SiteReport) -> SiteKey {
    site.stack
        .iter()
        .flat_map(|frame| {
            frame.calls().map(|(function, _, line)| match function {
                Some(function) => (function.to_owned(), line),
                None => (
                    format!(
                        "{}+0x{:x}",
                        frame.module.as_deref().unwrap_or("?"),
                        frame.file_offset.unwrap_or(frame.address)
                    ),
                    None,
                ),
            })
        })
        .collect()
}

/// `newer` with only the sites whose live bytes grew since `base`, most
/// first, each with its growth; sites of one stack are taken together.
pub fn grown_since(newer: &ProcessReport, base: &ProcessReport) -> ProcessReport {
    let mut before: HashMap<SiteKey, u64> = HashMap::new();
    for site in &base.sites {
        let then = before.entry(key(site)).or_default();
        *then = then.saturating_add(site.live_bytes);
    }
    let mut now: Vec<(SiteKey, SiteReport)> = Vec::new();
    let mut index: HashMap<SiteKey, usize> = HashMap::new();
    for site in &newer.sites {
        let key = key(site);
        match index.get(&key) {
            Some(&i) => now[i].1.absorb(site),
            None => {
                index.insert(key.clone(), now.len());
                now.push((key, site.clone()));
            }
        }
    }
    let mut sites: Vec<SiteReport> = now
        .into_iter()
        .filter_map(|(key, mut site)| {
            let then = before.get(&key).copied().unwrap_or(0);
            let grown = i64::try_from(site.live_bytes)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(then).unwrap_or(i64::MAX));
            site.grown_bytes = Some(grown);
            (grown > 0).then_some(site)
        })
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.grown_bytes));
    ProcessReport {
        base_in_use_bytes: Some(base.in_use_bytes),
        sites,
        ..newer.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::SymFrame;

    fn site(live_bytes: u64, functions: &[&str], address: u64) -> SiteReport {
        let stack = functions
            .iter()
            .map(|&function| SymFrame {
                address,
                module: Some("/bin/app".to_owned()),
                build_id: None,
                file_offset: Some(address),
                function: (!function.is_empty()).then(|| function.to_owned()),
                file: None,
                line: Some(1),
                mapping: None,
                inlined: Vec::new(),
            })
            .collect();
        SiteReport {
            live_bytes,
            live_blocks: 1,
            ..SiteReport::with_stack(stack)
        }
    }

    fn process(sites: Vec<SiteReport>) -> ProcessReport {
        ProcessReport {
            in_use_bytes: sites.iter().map(|s| s.live_bytes).sum(),
            sites,
            ..ProcessReport::summary(5, &Default::default(), false)
        }
    }

    #[test]
    fn sites_are_matched_by_their_calls_and_only_growth_is_shown() {
        let base = process(vec![
            site(100, &["leak", "main"], 0x10),
            site(500, &["cache", "main"], 0x20),
            site(50, &["", "main"], 0x30),
        ]);
        // Another run: other addresses, the same calls.
        let newer = process(vec![
            site(400, &["leak", "main"], 0x9910),
            site(300, &["cache", "main"], 0x9920),
            site(70, &["fresh", "main"], 0x9940),
            site(30, &["fresh", "main"], 0x9950),
            site(80, &["", "main"], 0x30),
        ]);
        let grown = grown_since(&newer, &base);
        let shown: Vec<(u64, Option<i64>)> = grown
            .sites
            .iter()
            .map(|s| (s.live_bytes, s.grown_bytes))
            .collect();
        assert_eq!(
            shown,
            [(400, Some(300)), (100, Some(100)), (80, Some(30))],
            "the cache shrank; a new site grew from nothing; an unsymbolized frame matched by offset"
        );
        assert_eq!(grown.base_in_use_bytes, Some(650));
        assert_eq!(grown.in_use_bytes, newer.in_use_bytes);
    }
}
