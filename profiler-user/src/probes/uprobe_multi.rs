//! Multi-uprobe links (`BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI`,
//! kernel 6.6 and later): one link attaches a program to every offset of one
//! file, with an optional PID filter, and detaching it waits for one
//! synchronization, where each perf event waits for its own under a lock
//! the kernel holds for all of them. aya 0.14 neither creates these links nor
//! loads programs for their attach type, so this module does both: it
//! relocates the programs of heapwatch's object against the maps aya
//! created, loads them with the attach type, and links them with the bpf()
//! call. Where the kernel refuses, the caller falls back to perf events.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io, mem,
    num::NonZeroU32,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE,
};
use thiserror::Error;

/// Why programs could not be loaded for multi-uprobe links.
#[derive(Debug, Error)]
pub enum MultiError {
    /// The object could not be parsed or relocated.
    #[error("prepare the eBPF object: {0}")]
    Object(String),
    /// A program is not in the object.
    #[error("no program {0} in the eBPF object")]
    Missing(&'static str),
    /// A map aya created has no file descriptor heapwatch can reach.
    #[error("eBPF map {0} is of a kind heapwatch does not link")]
    Map(String),
    /// The kernel refused the program.
    #[error("load {name} for multi-uprobe links: {source}{log}")]
    Load {
        /// The program.
        name: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
        /// The verifier's last words, when it spoke.
        log: String,
    },
}

/// Programs loaded for multi-uprobe links, by name.
#[derive(Default)]
pub struct MultiPrograms {
    programs: HashMap<&'static str, OwnedFd>,
}

impl MultiPrograms {
    /// Loads the programs `names` of `object` (the bytes aya loaded `ebpf`
    /// from), using the maps aya created.
    pub fn load(object: &[u8], ebpf: &Ebpf, names: &[&'static str]) -> Result<Self, MultiError> {
        let mut obj =
            aya_obj::Object::parse(object).map_err(|e| MultiError::Object(e.to_string()))?;
        let btf = load_btf(&mut obj)?;
        let definitions = obj.maps.clone();
        let fds = ebpf
            .maps()
            .map(|(name, map)| {
                Ok((
                    name,
                    map_fd(map).ok_or_else(|| MultiError::Map(name.to_owned()))?,
                ))
            })
            .collect::<Result<Vec<(&str, RawFd)>, MultiError>>()?;
        let text_sections: HashSet<usize> =
            obj.functions.keys().map(|&(section, _)| section).collect();
        obj.relocate_maps(
            fds.iter()
                .filter_map(|&(name, fd)| Some((name, fd, definitions.get(name)?))),
            &text_sections,
        )
        .map_err(|e| MultiError::Object(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| MultiError::Object(e.to_string()))?;
        let mut programs = HashMap::new();
        for &name in names {
            if programs.contains_key(name) {
                continue;
            }
            let program = obj.programs.get(name).ok_or(MultiError::Missing(name))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or(MultiError::Missing(name))?;
            let fd = load_program(name, function, &program.license, &btf)?;
            programs.insert(name, fd);
        }
        Ok(Self { programs })
    }

    /// Attaches program `name` to `offsets` in the file at `path` (at their
    /// returns with `returns`), in process `pid` alone or in every process.
    pub fn link(
        &self,
        name: &'static str,
        path: &Path,
        offsets: &[u64],
        returns: bool,
        pid: Option<NonZeroU32>,
    ) -> io::Result<MultiLink> {
        let program = self
            .programs
            .get(name)
            .ok_or_else(|| io::Error::other(format!("program {name} is not loaded")))?;
        let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a zeroed bpf_attr is a valid value of the plain-data union.
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        // SAFETY: link_create is the member BPF_LINK_CREATE reads; every
        // pointer stays valid until the call returns.
        unsafe {
            let create = &mut attr.link_create;
            create.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
            create.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            let multi = &mut create.__bindgen_anon_3.uprobe_multi;
            multi.path = path.as_ptr() as u64;
            multi.offsets = offsets.as_ptr() as u64;
            multi.cnt = offsets.len() as u32;
            multi.flags = if returns {
                BPF_F_UPROBE_MULTI_RETURN
            } else {
                0
            };
            multi.pid = pid.map_or(0, NonZeroU32::get);
        }
        bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(|fd| MultiLink { _fd: fd })
    }
}

/// An attached multi-uprobe link: closing it detaches every offset at once.
pub struct MultiLink {
    _fd: OwnedFd,
}

/// Bytes of verifier log kept when a program is refused.
const LOG_BYTES: usize = 64 * 1024;

/// The object's BTF, fixed up as aya does and loaded: programs that hand a
/// callback to a helper (the stack walk's `bpf_loop`) need their functions
/// described.
fn load_btf(obj: &mut aya_obj::Object) -> Result<OwnedFd, MultiError> {
    // Every BTF feature: kernels old enough to lack one lack multi-uprobe
    // links too, and take perf events instead.
    let features = aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
    let btf = obj
        .fixup_and_sanitize_btf(&features)
        .map_err(|e| MultiError::Object(e.to_string()))?
        .ok_or_else(|| MultiError::Object("the object has no BTF".to_owned()))?;
    let bytes = btf.to_bytes();
    // SAFETY: a zeroed bpf_attr is a valid value of the plain-data union.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the anonymous member 7 is the one BPF_BTF_LOAD reads; `bytes`
    // outlives the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_7;
        load.btf = bytes.as_ptr() as u64;
        load.btf_size = bytes.len() as u32;
    }
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).map_err(|source| MultiError::Load {
        name: "BTF",
        source,
        log: String::new(),
    })
}

/// Loads one program for multi-uprobe links; on refusal, loads it again
/// with the verifier's log to say why.
fn load_program(
    name: &'static str,
    function: &aya_obj::Function,
    license: &CString,
    btf: &OwnedFd,
) -> Result<OwnedFd, MultiError> {
    let instructions = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let attempt = |log: &mut [u8]| {
        // SAFETY: a zeroed bpf_attr is a valid value of the plain-data union.
        let mut attr: bpf_attr = unsafe { mem::zeroed() };
        // SAFETY: the anonymous member 3 is the one BPF_PROG_LOAD reads;
        // every pointer stays valid until the call returns.
        unsafe {
            let load = &mut attr.__bindgen_anon_3;
            load.prog_type = BPF_PROG_TYPE_KPROBE as u32;
            load.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
            load.insns = instructions.as_ptr() as u64;
            load.insn_cnt = instructions.len() as u32;
            load.license = license.as_ptr() as u64;
            for (slot, byte) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
                *slot = byte as libc::c_char;
            }
            load.prog_btf_fd = btf.as_raw_fd() as u32;
            load.func_info = func_info.as_ptr() as u64;
            load.func_info_cnt = function.func_info.len() as u32;
            load.func_info_rec_size = function.func_info_rec_size as u32;
            load.line_info = line_info.as_ptr() as u64;
            load.line_info_cnt = function.line_info.len() as u32;
            load.line_info_rec_size = function.line_info_rec_size as u32;
            if !log.is_empty() {
                load.log_level = 1;
                load.log_buf = log.as_mut_ptr() as u64;
                load.log_size = log.len() as u32;
            }
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    attempt(&mut []).map_err(|source| {
        let mut log = vec![0u8; LOG_BYTES];
        let _ = attempt(&mut log);
        MultiError::Load {
            name,
            source,
            log: log_tail(&log),
        }
    })
}

/// The verifier log's last lines, as a suffix for an error message.
fn log_tail(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut tail: Vec<&str> = lines.into_iter().rev().collect();
    tail.insert(0, "");
    tail.join("\n  ")
}

/// The bpf() system call with `attr`; its result, a new file descriptor.
fn bpf(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            attr as *mut bpf_attr,
            mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// The file descriptor of a map aya created.
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data)
        | Map::Unsupported(data) => data,
        _ => return None,
    };
    Some(std::os::fd::AsFd::as_fd(data.fd()).as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tail_is_its_last_three_lines() {
        let mut log = b"one\ntwo\nthree\nfour\n".to_vec();
        log.extend([0; 8]);
        assert_eq!(log_tail(&log), "\n  two\n  three\n  four");
        assert_eq!(log_tail(&[0; 4]), "");
    }
}
