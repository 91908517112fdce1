//! tracefs: mounting it when missing, and reading tracepoint record layouts.

use std::{ffi::CString, fs, io, path::Path};

/// Where tracefs is mounted, or mounted by [`ensure_mounted`].
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] unless it (or debugfs's copy) is there.
pub fn ensure_mounted() -> io::Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let source = CString::from(c"tracefs");
    let target = CString::new(TRACEFS).map_err(io::Error::other)?;
    // SAFETY: the strings are valid and NUL-terminated; no data argument.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `format` file of tracepoint `category/name`.
pub fn read_format(category: &str, name: &str) -> io::Result<String> {
    fs::read_to_string(
        Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(name)
            .join("format"),
    )
}

/// The byte offset of `field` in a tracepoint record, from its format text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim().strip_prefix("field:")?;
        let (declaration, rest) = line.split_once(';')?;
        let name = declaration.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|offset| offset.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    const EXIT: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    #[test]
    fn reads_offsets_of_named_fields() {
        assert_eq!(field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT, "pid"), Some(24));
        assert_eq!(field_offset(EXIT, "comm"), Some(8));
        assert_eq!(field_offset(EXIT, "common_pid"), Some(4));
    }

    #[test]
    fn missing_fields_are_none() {
        assert_eq!(field_offset(EXIT, "prio"), None);
        assert_eq!(field_offset("", "pid"), None);
        assert_eq!(field_offset("\tfield:int pid;\toffset:x;", "pid"), None);
    }
}
