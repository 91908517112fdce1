//! The stack depth of the programs every malloc+free pair runs, read from
//! the eBPF object. From 64 bytes of stack, the kernel (6.13 and later)
//! runs a program on a per-CPU private stack; every `bpf_probe_read_user`
//! into it then goes through hardened usercopy's checks of a heap object
//! (`is_vmalloc_addr`, `virt_addr_valid`) on every read, where the task's
//! own stack passes at once.

use object::{Object, ObjectSection, ObjectSymbol};

/// The kernel's `BPF_PRIV_STACK_MIN_SIZE`.
const PRIVATE_STACK_FROM: i64 = 64;

/// The functions on a malloc+free pair's path (programs and subprograms).
const HOT: [&str; 4] = [
    "size_arg0_entry",
    "free_entry",
    "alloc_return",
    "begin_call",
];

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const CALL: u8 = 0x85;
const LD_IMM64: u8 = 0x18;
const FRAME_POINTER: u8 = 10;

/// Bytes of stack a function's instructions reach below the frame pointer:
/// loads and stores through it, and pointers made from it (`rX = r10;
/// rX += -N`, as LLVM makes them for a helper's buffer).
fn stack_depth(code: &[u8]) -> i64 {
    let mut from_frame = [false; 11];
    let mut depth = 0;
    let mut at = 0;
    while at + 8 <= code.len() {
        let insn = &code[at..at + 8];
        let (op, dst, src) = (insn[0], usize::from(insn[1] & 0xf), insn[1] >> 4);
        let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        match (op, op & 0x07) {
            (_, CLASS_LDX) if src == FRAME_POINTER => depth = depth.max(-off),
            (_, CLASS_ST | CLASS_STX) if dst == usize::from(FRAME_POINTER) => {
                depth = depth.max(-off)
            }
            (MOV64_REG, _) => from_frame[dst] = src == FRAME_POINTER,
            (ADD64_IMM, _) if from_frame[dst] => {
                depth = depth.max(-imm);
                from_frame[dst] = false;
            }
            (CALL, _) => from_frame[..=5].fill(false),
            _ if dst < from_frame.len() => from_frame[dst] = false,
            _ => {}
        }
        at += if op == LD_IMM64 { 16 } else { 8 };
    }
    depth
}

/// (name, stack depth) of every function in the eBPF object.
fn depths() -> Vec<(String, i64)> {
    let elf = include_bytes!(concat!(env!("OUT_DIR"), "/heapwatch"));
    let file = object::File::parse(&elf[..]).expect("the eBPF object parses");
    file.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|symbol| {
            let section = file
                .section_by_index(symbol.section_index().expect("in a section"))
                .expect("its section");
            let data = section.data().expect("section data");
            let start = usize::try_from(symbol.address()).expect("offset");
            let end = start + usize::try_from(symbol.size()).expect("size");
            let name = symbol.name().expect("a name").to_owned();
            (name, stack_depth(&data[start..end]))
        })
        .collect()
}

/// True when `symbol` is the function `name`: a program under its own
/// name, a subprogram under its Rust (v0) mangled one, where an identifier
/// is its length and itself.
fn is_named(symbol: &str, name: &str) -> bool {
    symbol == name || symbol.contains(&format!("{}{name}", name.len()))
}

#[test]
fn the_programs_of_a_pair_run_on_the_tasks_own_stack() {
    let depths = depths();
    for hot in HOT {
        let (_, depth) = depths
            .iter()
            .find(|(name, _)| is_named(name, hot))
            .unwrap_or_else(|| panic!("no function {hot} in the eBPF object: {depths:?}"));
        assert!(
            *depth < PRIVATE_STACK_FROM,
            "{hot} uses {depth} bytes of stack: from {PRIVATE_STACK_FROM}, the kernel gives it a private stack, and its user reads cost 40 ns more"
        );
    }
}

#[test]
fn the_depth_scan_sees_the_stack_walks_window() {
    let depths = depths();
    let walks: Vec<_> = depths
        .iter()
        .filter(|(name, _)| is_named(name, "walk_on"))
        .collect();
    assert!(!walks.is_empty(), "{depths:?}");
    for (name, depth) in walks {
        assert!(*depth >= 256, "{name}: {depth}");
    }
}
