//! heapwatch's eBPF programs.
//!
//! Entry uprobes on the allocator functions record the request of a thread's
//! outermost call; one shared uretprobe turns it into an ALLOC record; free
//! and realloc's old block become FREE records at entry. Tracepoints report
//! exec, exit and new processes. Every record that cannot be kept is counted.
#![no_std]
#![no_main]

mod filter;
mod lifecycle;
mod maps;
mod record;
mod stack_walk;
mod thread;

use core::ptr;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    Counter, OUTER_CALL_MAX_FRAME, OuterCall, Pending, Placement, ThreadState, func, kind,
    placement, returns_within, saturating_product,
};

use crate::{
    maps::{count, mark_unseen},
    record::{emit, emit_alloc},
    stack_walk::{CallSite, site},
    thread::Thread,
};

/// [`Pending::stack`] of a call whose site is found at its return. (A stack
/// hashing to 0 would be attributed to the malloc's own site: a 2^-64 chance.)
const NO_SITE_YET: u64 = 0;

/// Entry of malloc, valloc and pvalloc: `size` is the first argument.
#[uprobe]
pub fn size_arg0_entry(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    begin_call(&ctx, func::RETURNS_POINTER, size, 0);
    0
}

/// Entry of aligned_alloc and memalign: `size` is the second argument.
#[uprobe]
pub fn size_arg1_entry(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    begin_call(&ctx, func::RETURNS_POINTER, size, 0);
    0
}

/// Entry of calloc(n, m): `n * m` bytes (an overflowing product fails in libc).
#[uprobe]
pub fn calloc_entry(ctx: ProbeContext) -> u32 {
    let size = array_size(&ctx, 0);
    begin_call(&ctx, func::RETURNS_POINTER, size, 0);
    0
}

/// Entry of realloc(p, n).
#[uprobe]
pub fn realloc_entry(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    begin_realloc(&ctx, size);
    0
}

/// Entry of reallocarray(p, n, m).
#[uprobe]
pub fn reallocarray_entry(ctx: ProbeContext) -> u32 {
    let size = array_size(&ctx, 1);
    begin_realloc(&ctx, size);
    0
}

/// Entry of posix_memalign(memptr, alignment, size).
#[uprobe]
pub fn posix_memalign_entry(ctx: ProbeContext) -> u32 {
    let memptr = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    begin_call(&ctx, func::POSIX_MEMALIGN, size, memptr);
    0
}

/// Entry of free(p): free(NULL) and frees made by the allocator itself count
/// nothing; a free by an exiting thread is told apart.
#[uprobe]
pub fn free_entry(ctx: ProbeContext) -> u32 {
    let ptr = ctx.arg::<u64>(0).unwrap_or(0);
    if ptr == 0 {
        return 0;
    }
    let Some(Thread { pid_tgid, state }) = Thread::current(ctx.regs, false) else {
        return 0;
    };
    let kind = match state {
        // SAFETY: the thread's own storage, read only.
        Some(thread) => unsafe {
            if made_by_a_call_in_progress(thread, stack_pointer(ctx.regs)) {
                return 0;
            }
            if (*thread).exiting == 0 {
                kind::FREE
            } else {
                kind::EXITING_FREE
            }
        },
        None => kind::FREE,
    };
    emit(kind, pid_tgid, ptr);
    0
}

/// True when a call starting at `sp` is made by one of `thread`'s
/// allocator calls in progress (glibc calling itself), not by the program
/// or a signal handler.
///
/// # Safety
///
/// `thread` is the current thread's storage.
unsafe fn made_by_a_call_in_progress(thread: *const ThreadState, sp: u64) -> bool {
    // SAFETY: as the caller promises.
    let (call, handler) = unsafe { (&(*thread).call, &(*thread).handler) };
    (call.func != 0 && placement(call.sp, sp) == Placement::Nested)
        || (handler.func != 0 && placement(handler.sp, sp) == Placement::Nested)
}

/// Entry of glibc's `__call_tls_dtors`, the first step of a thread's exit
/// (and of `exit`): the thread's later frees of blocks not live are glibc
/// releasing its per-thread cache of freed blocks.
#[uprobe]
pub fn thread_exit_entry(ctx: ProbeContext) -> u32 {
    if let Some(thread) = Thread::current(ctx.regs, true).and_then(|thread| thread.state) {
        // SAFETY: the thread's own storage, valid for this run; only this thread writes it.
        unsafe { (*thread).exiting = 1 };
    }
    0
}

/// Entry of C++ `operator new` (all variants): remembers its call site for the
/// malloc it makes. It is not counted itself; that malloc is.
#[uprobe]
pub fn cxx_new_entry(ctx: ProbeContext) -> u32 {
    let Some(thread) = Thread::current(ctx.regs, true).and_then(|thread| thread.state) else {
        return 0;
    };
    let sp = stack_pointer(ctx.regs);
    // SAFETY: the thread's own storage, valid for this run; only this thread writes it.
    unsafe {
        // operator new[] calls operator new: keep the outermost call site.
        if (*thread).call.func != 0 || encloses(&(*thread).outer, sp) {
            return 0;
        }
        (*thread).outer = OuterCall {
            stack: site(CallSite::at_entry(ctx.regs), thread),
            sp,
        };
    }
    0
}

/// Return of every allocating function: emits the allocation of the outermost call.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(Thread {
        pid_tgid,
        state: Some(thread),
    }) = Thread::current(ctx.regs, false)
    else {
        return 0;
    };
    let sp = stack_pointer(ctx.regs);
    // SAFETY: the thread's own storage, valid for this run; only this thread writes it.
    let (pending, first) = unsafe {
        let handler = &raw mut (*thread).handler;
        // A handler's call returns before the call it interrupted.
        let in_handler = (*handler).func != 0 && returns_within((*handler).sp, sp);
        let call = if in_handler {
            handler
        } else {
            &raw mut (*thread).call
        };
        if (*call).func == 0 {
            return 0;
        }
        if (*call).depth > 0 {
            (*call).depth -= 1;
            return 0;
        }
        let pending = *call;
        (*call).func = 0;
        if !in_handler {
            // A handler's call left unfinished (longjmp out of the
            // handler) ends with the call it interrupted.
            (*handler).func = 0;
        }
        (pending, first_allocation(thread))
    };
    // SAFETY: the thread's own storage, as above.
    unsafe { finish_call(&ctx, thread, pid_tgid, &pending, first) };
    0
}

/// True for the thread's first allocation in this image: it wakes the reader
/// at once, so that the reader reads the process's mappings while it lives.
///
/// # Safety
///
/// `thread` is the current thread's storage.
unsafe fn first_allocation(thread: *mut ThreadState) -> bool {
    // SAFETY: as the caller promises.
    unsafe {
        let first = (*thread).woke == 0;
        (*thread).woke = 1;
        first
    }
}

/// Emits the allocation `p` returned by `thread`'s outermost call (or a
/// failed realloc's).
///
/// # Safety
///
/// `thread` is the current thread's storage.
unsafe fn finish_call(
    ctx: &RetProbeContext,
    thread: *mut ThreadState,
    pid_tgid: u64,
    p: &Pending,
    first: bool,
) {
    let ret: u64 = ctx.ret();
    let ptr = match p.func {
        func::POSIX_MEMALIGN if ret as u32 == 0 => {
            // SAFETY: reads user memory through the helper, which fails safely.
            unsafe { bpf_probe_read_user(p.aux as *const u64) }.unwrap_or(0)
        }
        func::POSIX_MEMALIGN => 0,
        _ => ret,
    };
    if ptr != 0 {
        let stack = match p.stack {
            // SAFETY: as the caller promises.
            NO_SITE_YET => unsafe { site(CallSite::at_return(ctx.regs), thread) },
            stack => stack,
        };
        emit_alloc(pid_tgid, ptr, p.size, stack, first);
    } else if p.func == func::REALLOC && p.aux != 0 && p.size != 0 {
        emit(kind::REALLOC_FAIL, pid_tgid, p.aux);
    }
}

fn begin_realloc(ctx: &ProbeContext, size: u64) {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    if let Some(pid_tgid) = begin_call(ctx, func::REALLOC, size, old)
        && old != 0
    {
        emit(kind::REALLOC_FREE, pid_tgid, old);
    }
}

/// Records the outermost allocator call of a thread, or a signal handler's
/// call made while one is in progress; a nested call only deepens the
/// guard. Returns the caller's pid_tgid when the call is recorded.
fn begin_call(ctx: &ProbeContext, func: u32, size: u64, aux: u64) -> Option<u64> {
    let Thread { pid_tgid, state } = Thread::current(ctx.regs, true)?;
    let Some(thread) = state else {
        count(Counter::Unpaired);
        return None;
    };
    let sp = stack_pointer(ctx.regs);
    // SAFETY: the thread's own storage, valid for this run; only this thread writes it.
    unsafe {
        let slot = call_slot(thread, sp)?;
        // The site is found at return, where the caller costs no user read.
        let stack = outer_site(ctx, thread).unwrap_or(NO_SITE_YET);
        // Field by field: a whole `Pending` built first would take stack
        // space the kernel then gives the program privately (see
        // stack_depth_tests.rs).
        (*slot).size = size;
        (*slot).aux = aux;
        (*slot).stack = stack;
        (*slot).sp = sp;
        (*slot).func = func;
        (*slot).depth = 0;
    }
    Some(pid_tgid)
}

/// Where `thread`'s call starting at `sp` is to be recorded: the outermost
/// call's place, or a signal handler's while a call is in progress; `None`
/// for a call nested in one (its depth is counted) or a handler's call
/// while another handler's is in progress (the process is marked inexact).
///
/// # Safety
///
/// `thread` is the current thread's storage.
unsafe fn call_slot(thread: *mut ThreadState, sp: u64) -> Option<*mut Pending> {
    // SAFETY: as the caller promises.
    unsafe {
        let call = &raw mut (*thread).call;
        let handler = &raw mut (*thread).handler;
        if (*call).func != 0 {
            match placement((*call).sp, sp) {
                Placement::Nested => {
                    (*call).depth += 1;
                    return None;
                }
                Placement::Handler => return handler_slot(handler, sp),
                Placement::Left => {}
            }
        }
        (*handler).func = 0;
        Some(call)
    }
}

/// The handler's place for a call starting at `sp` (see [`call_slot`]).
///
/// # Safety
///
/// `handler` is the current thread's handler call.
unsafe fn handler_slot(handler: *mut Pending, sp: u64) -> Option<*mut Pending> {
    // SAFETY: as the caller promises.
    unsafe {
        if (*handler).func != 0 {
            match placement((*handler).sp, sp) {
                Placement::Nested => {
                    (*handler).depth += 1;
                    return None;
                }
                Placement::Handler => {
                    // A third level (a signal within a handler's call): not
                    // followed; the process's figures are marked inexact.
                    mark_unseen(tgid_of(bpf_get_current_pid_tgid()));
                    return None;
                }
                Placement::Left => {}
            }
        }
        Some(handler)
    }
}

/// The call site of the `operator new` this allocation is made for, if the
/// thread's pending one is just above on the stack (a stale one never is).
///
/// # Safety
///
/// `thread` is the current thread's storage.
unsafe fn outer_site(ctx: &ProbeContext, thread: *mut ThreadState) -> Option<u64> {
    // SAFETY: as the caller promises. Cleared by two volatile stores: LLVM
    // makes any other clearing a call of memset, across which begin_call
    // spills registers past the stack the kernel lets it use.
    let outer = unsafe {
        let outer = (*thread).outer;
        ptr::write_volatile(&raw mut (*thread).outer.stack, 0);
        ptr::write_volatile(&raw mut (*thread).outer.sp, 0);
        outer
    };
    encloses(&outer, stack_pointer(ctx.regs)).then_some(outer.stack)
}

/// True when a call with stack pointer `sp` is made from inside `outer`'s call.
fn encloses(outer: &OuterCall, sp: u64) -> bool {
    sp < outer.sp && outer.sp - sp <= OUTER_CALL_MAX_FRAME
}

/// The stack pointer in a probe's saved registers `regs`.
fn stack_pointer(regs: *const pt_regs) -> u64 {
    // SAFETY: `regs` points at the probe's saved registers for this run.
    unsafe { (*regs).rsp }
}

/// The benchmark's floor: an entry program that does nothing, to measure
/// what the traps alone cost.
#[uprobe]
pub fn floor_entry(_ctx: ProbeContext) -> u32 {
    0
}

/// The benchmark's floor: a return program that does nothing.
#[uretprobe]
pub fn floor_return(_ctx: RetProbeContext) -> u32 {
    0
}

/// `n * m` from arguments `first` and `first + 1`; an overflow saturates (libc then fails the call).
fn array_size(ctx: &ProbeContext, first: usize) -> u64 {
    let n = ctx.arg::<u64>(first).unwrap_or(0);
    let m = ctx.arg::<u64>(first + 1).unwrap_or(0);
    saturating_product(n, m)
}

/// The process id half of a `bpf_get_current_pid_tgid` value.
pub(crate) const fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
