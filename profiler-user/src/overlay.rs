//! The file beneath an overlay: a container's root is an overlay mount, and
//! what it shows as a file (its own device, the layer's inode number) is one
//! file of a layer, shared by every container of the image. The kernel
//! probes that layer file, so heapwatch names it the same way: by the
//! mount's layers, as /proc/PID/mountinfo gives them, topmost first.

use std::path::{Path, PathBuf};

/// One mount of a mountinfo text.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// Where it is mounted, as the process sees it.
    point: PathBuf,
    /// The directory of its filesystem it shows.
    root: PathBuf,
    /// Its layers, topmost first (upper, then lowers), for an overlay.
    layers: Vec<PathBuf>,
}

/// The paths, topmost first, where the file that `path` names in a process
/// whose mountinfo is `mountinfo` may lie in its overlay's layers; empty
/// when the mount holding `path` is not an overlay.
pub fn layer_candidates(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let Some(mount) = mountinfo
        .lines()
        .filter_map(parse_mount)
        .filter(|mount| path.starts_with(&mount.point))
        .max_by_key(|mount| mount.point.components().count())
    else {
        return Vec::new();
    };
    let Ok(inner) = path.strip_prefix(&mount.point) else {
        return Vec::new();
    };
    let within = mount
        .root
        .strip_prefix("/")
        .unwrap_or(&mount.root)
        .join(inner);
    mount
        .layers
        .iter()
        .map(|layer| layer.join(&within))
        .collect()
}

fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let root = unescape(fields.nth(3)?);
    let point = unescape(fields.next()?);
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let _source = after.next()?;
    let options = after.next().unwrap_or("");
    let layers = if fstype == "overlay" {
        overlay_layers(options)
    } else {
        Vec::new()
    };
    Some(Mount {
        point: PathBuf::from(point),
        root: PathBuf::from(root),
        layers,
    })
}

/// An overlay's layers from its super options: `upperdir`, then
/// `lowerdir` (colon-separated, or given one at a time as `lowerdir+`).
fn overlay_layers(options: &str) -> Vec<PathBuf> {
    let mut upper = Vec::new();
    let mut lowers = Vec::new();
    for option in options.split(',') {
        if let Some(dir) = option.strip_prefix("upperdir=") {
            upper.push(PathBuf::from(unescape(dir)));
        } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
            lowers.extend(
                dirs.split(':')
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(unescape(d))),
            );
        } else if let Some(dir) = option.strip_prefix("lowerdir+=") {
            lowers.push(PathBuf::from(unescape(dir)));
        }
    }
    upper.extend(lowers);
    upper
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODMAN: &str = "\
1042 977 0:41 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/ABC:/var/lib/containers/storage/overlay/l/DEF,upperdir=/var/lib/containers/storage/overlay/123/diff,workdir=/var/lib/containers/storage/overlay/123/work
1043 1042 0:44 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1050 1042 254:0 /tmp/data /data rw - ext4 /dev/vda rw
";

    #[test]
    fn a_file_in_an_overlay_root_lies_in_its_layers_topmost_first() {
        let candidates = layer_candidates(PODMAN, Path::new("/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(
            candidates,
            [
                "/var/lib/containers/storage/overlay/123/diff/lib/x86_64-linux-gnu/libc.so.6",
                "/var/lib/containers/storage/overlay/l/ABC/lib/x86_64-linux-gnu/libc.so.6",
                "/var/lib/containers/storage/overlay/l/DEF/lib/x86_64-linux-gnu/libc.so.6",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_file_on_another_mount_is_not_in_a_layer() {
        assert!(layer_candidates(PODMAN, Path::new("/data/prog")).is_empty());
        let host = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n";
        assert!(layer_candidates(host, Path::new("/usr/lib/libc.so.6")).is_empty());
    }

    #[test]
    fn layers_given_one_at_a_time_and_escaped_paths() {
        let line = "5 1 0:50 / / rw - overlay overlay rw,lowerdir+=/l/one,lowerdir+=/l/two\\040x,upperdir=/u\n";
        assert_eq!(
            layer_candidates(line, Path::new("/bin/sh")),
            ["/u/bin/sh", "/l/one/bin/sh", "/l/two x/bin/sh"].map(PathBuf::from)
        );
    }

    #[test]
    fn garbage_is_no_overlay() {
        for text in [
            "",
            "x",
            " - ",
            "1 2 3 4 5 - overlay",
            "\\\\\\0 - overlay x lowerdir=:",
        ] {
            let _ = layer_candidates(text, Path::new("/a"));
        }
    }
}
