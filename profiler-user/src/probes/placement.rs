//! Where each entry probe (and the return probe, which shares its
//! breakpoint) goes. A uprobe on an instruction the kernel
//! emulates (push, nop, a relative branch or call) costs one trap; on any
//! other it is single-stepped out of line, a second trap (glibc's free+0,
//! `test %rdi,%rdi`, costs an order of magnitude more than free+9; the
//! figures are in docs/measurements.md).
//! The probe moves to the first emulated instruction when every instruction
//! before it leaves the argument registers and the stack pointer alone and
//! leads nowhere that needs accounting: only `endbr64`, a `test`/`cmp`, and —
//! for a function where a NULL first argument does nothing (free) — the
//! branch taken on NULL. Otherwise it stays at +0. Pure: decodes bytes.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Instructions looked at before giving up and probing +0.
const MAX_INSTRUCTIONS: usize = 6;

/// What the probed function does with a NULL first argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullFirstArg {
    /// Nothing to account (free): the branch taken on NULL may be skipped.
    DoesNothing,
    /// Something to account (realloc(NULL, n) allocates), or not a pointer.
    Matters,
}

/// An entry probe's offset from its function's start, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes past the function's first instruction.
    pub offset: u64,
    /// Why there, for `heapwatch daemon --check`.
    pub reason: String,
}

impl Placement {
    /// The function's first instruction, whatever it is.
    pub fn entry() -> Self {
        Self {
            offset: 0,
            reason: "at +0 as asked".to_owned(),
        }
    }
}

/// The entry probe's place in a function starting with `code`.
pub fn place(code: &[u8], null_first_arg: NullFirstArg) -> Placement {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut passed: Vec<String> = Vec::new();
    let mut after_null_test = false;
    for instruction in decoder.iter().take(MAX_INSTRUCTIONS) {
        if instruction.is_invalid() {
            break;
        }
        let text = describe(&instruction);
        if is_emulated(&instruction)
            && !is_null_branch(&instruction, after_null_test, null_first_arg)
        {
            return emulated_at(instruction.ip(), &text, &passed);
        }
        if is_null_branch(&instruction, after_null_test, null_first_arg) {
            after_null_test = false;
            passed.push(format!("{text} (taken on NULL, which needs no accounting)"));
            continue;
        }
        if !leaves_arguments_alone(&instruction) {
            return single_stepped(code, &text, &passed);
        }
        after_null_test = tests_first_arg_for_null(&instruction);
        passed.push(text);
    }
    let first = decoder_first(code);
    single_stepped(code, &first, &[])
}

fn emulated_at(offset: u64, text: &str, passed: &[String]) -> Placement {
    let reason = if passed.is_empty() {
        format!("`{text}` at +0 is emulated (one trap)")
    } else {
        format!(
            "past {}: `{text}` at +{offset} is emulated (one trap)",
            passed
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Placement { offset, reason }
}

fn single_stepped(code: &[u8], stopped_at: &str, passed: &[String]) -> Placement {
    let first = decoder_first(code);
    let reason = if passed.is_empty() && stopped_at == first {
        format!("`{first}` at +0 is single-stepped (two traps): nothing emulated comes first")
    } else {
        format!(
            "`{first}` at +0 is single-stepped (two traps): `{stopped_at}` comes before anything emulated and may not be skipped"
        )
    };
    Placement { offset: 0, reason }
}

fn decoder_first(code: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    match decoder.iter().next() {
        Some(instruction) if !instruction.is_invalid() => describe(&instruction),
        _ => "undecodable code".to_owned(),
    }
}

/// Instructions the kernel's uprobes emulate instead of single-stepping.
fn is_emulated(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Nop => true,
        Mnemonic::Push => instruction.op0_kind() == OpKind::Register,
        Mnemonic::Jmp
        | Mnemonic::Call
        | Mnemonic::Jo
        | Mnemonic::Jno
        | Mnemonic::Jb
        | Mnemonic::Jae
        | Mnemonic::Je
        | Mnemonic::Jne
        | Mnemonic::Jbe
        | Mnemonic::Ja
        | Mnemonic::Js
        | Mnemonic::Jns
        | Mnemonic::Jp
        | Mnemonic::Jnp
        | Mnemonic::Jl
        | Mnemonic::Jge
        | Mnemonic::Jle
        | Mnemonic::Jg => is_relative(instruction),
        _ => false,
    }
}

fn is_relative(instruction: &Instruction) -> bool {
    matches!(
        instruction.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

/// Instructions that write only flags: skipping them changes nothing a probe reads.
fn leaves_arguments_alone(instruction: &Instruction) -> bool {
    matches!(
        instruction.mnemonic(),
        Mnemonic::Endbr64 | Mnemonic::Test | Mnemonic::Cmp
    )
}

/// `test %rdi,%rdi` or `cmp $0,%rdi`: ZF set when the first argument is NULL.
fn tests_first_arg_for_null(instruction: &Instruction) -> bool {
    let first_arg = |i: u32| {
        instruction.op_kind(i) == OpKind::Register && instruction.op_register(i) == Register::RDI
    };
    match instruction.mnemonic() {
        Mnemonic::Test => first_arg(0) && first_arg(1),
        Mnemonic::Cmp => {
            first_arg(0)
                && instruction.op1_kind() != OpKind::Register
                && instruction.immediate(1) == 0
        }
        _ => false,
    }
}

/// `je`/`jz` right after a NULL test of the first argument, in a function
/// where NULL does nothing.
fn is_null_branch(instruction: &Instruction, after_null_test: bool, null: NullFirstArg) -> bool {
    after_null_test && null == NullFirstArg::DoesNothing && instruction.mnemonic() == Mnemonic::Je
}

/// `push rbp`, `test rdi, rdi`: the mnemonic and the register operands.
fn describe(instruction: &Instruction) -> String {
    let mnemonic = format!("{:?}", instruction.mnemonic()).to_lowercase();
    let registers: Vec<String> = (0..instruction.op_count())
        .filter(|&i| instruction.op_kind(i) == OpKind::Register)
        .map(|i| format!("{:?}", instruction.op_register(i)).to_lowercase())
        .collect();
    if registers.is_empty() {
        mnemonic
    } else {
        format!("{mnemonic} {}", registers.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc 2.36's free: test %rdi,%rdi; je rel32; push %rbp; ...
    const FREE: [u8; 11] = [
        0x48, 0x85, 0xff, 0x0f, 0x84, 0x10, 0x00, 0x00, 0x00, 0x55, 0x53,
    ];

    #[test]
    fn free_is_probed_past_its_null_check() {
        let at = place(&FREE, NullFirstArg::DoesNothing);
        assert_eq!(at.offset, 9, "{}", at.reason);
        assert!(at.reason.contains("`test rdi, rdi`"), "{}", at.reason);
        assert!(at.reason.contains("`push rbp` at +9"), "{}", at.reason);
    }

    #[test]
    fn a_null_check_that_matters_is_probed_at_its_branch() {
        let at = place(&FREE, NullFirstArg::Matters);
        assert_eq!(at.offset, 3, "{}", at.reason);
        assert!(
            at.reason.contains("`je` at +3 is emulated"),
            "{}",
            at.reason
        );
    }

    #[test]
    fn a_push_at_the_entry_is_probed_there() {
        // push %r12; push %rbp; mov %rdi,%rbp
        let at = place(&[0x41, 0x54, 0x55, 0x48, 0x89, 0xfd], NullFirstArg::Matters);
        assert_eq!(
            at,
            Placement {
                offset: 0,
                reason: "`push r12` at +0 is emulated (one trap)".to_owned()
            }
        );
    }

    #[test]
    fn a_nop_is_emulated() {
        let at = place(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55], NullFirstArg::Matters);
        assert_eq!(at.offset, 0, "{}", at.reason);
    }

    #[test]
    fn endbr64_is_skipped() {
        // endbr64; push %rbp
        let at = place(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], NullFirstArg::Matters);
        assert_eq!(at.offset, 4, "{}", at.reason);
        assert!(at.reason.starts_with("past `endbr64`"), "{}", at.reason);
    }

    #[test]
    fn an_argument_register_written_first_keeps_the_probe_at_the_entry() {
        // mov %rsi,%rdi; push %rbp
        let at = place(&[0x48, 0x89, 0xf7, 0x55], NullFirstArg::Matters);
        assert_eq!(at.offset, 0, "{}", at.reason);
        assert!(at.reason.contains("single-stepped"), "{}", at.reason);
        // sub $8,%rsp (moves the stack pointer the caller's address is read at)
        let at = place(&[0x48, 0x83, 0xec, 0x08, 0x55], NullFirstArg::Matters);
        assert_eq!(at.offset, 0, "{}", at.reason);
    }

    #[test]
    fn unknown_bytes_keep_the_probe_at_the_entry() {
        for code in [&[][..], &[0x0f, 0x0b], &[0xff; 3]] {
            assert_eq!(place(code, NullFirstArg::DoesNothing).offset, 0, "{code:?}");
        }
    }

    #[test]
    fn a_branch_not_on_a_null_test_is_not_skipped() {
        // test %rsi,%rsi; je; push %rbp
        let code = [0x48, 0x85, 0xf6, 0x74, 0x05, 0x55];
        let at = place(&code, NullFirstArg::DoesNothing);
        assert_eq!(at.offset, 3, "{}", at.reason);
    }

    #[test]
    fn this_machines_free_and_malloc() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let libc = super::super::libc_in_maps(&maps).expect("tests link the C library");
        let table = super::super::symbols::read_symbols(&libc, &["free", "malloc"]).expect("libc");
        let free = place(&table.prologues["free"], NullFirstArg::DoesNothing);
        let malloc = place(&table.prologues["malloc"], NullFirstArg::Matters);
        // glibc 2.36 (Debian 12): free+9 is `push %rbp`, malloc starts with `push %r12`.
        assert_eq!((free.offset, malloc.offset), (9, 0), "{free:?} {malloc:?}");
    }
}
