//! Allocation sites: the user stack, walked by frame pointers and hashed.
//! An allocation carries only the hash; a stack is sent to userspace the
//! first time it is seen. Cheaper than `bpf_get_stackid` (which costs more
//! than a whole malloc+free pair's probes) and free of its map's bucket
//! collisions.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, offset_of},
    ptr,
};

use aya_ebpf::{
    bindings::{bpf_dynptr, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user,
        generated::{
            bpf_dynptr_write, bpf_loop, bpf_probe_read_user as bpf_probe_read_user_raw,
            bpf_ringbuf_discard_dynptr, bpf_ringbuf_reserve_dynptr, bpf_ringbuf_submit_dynptr,
        },
    },
};
use profiler_common::{
    MAX_STACK_DEPTH, STACK_UNSAMPLED, StackEvent, ThreadState, kind, stack_hash_seed,
    stack_hash_step,
};

use crate::{
    maps::{EVENTS, STACK_SAMPLE_EVERY, count_lost, remember_stack, stack_known},
    tgid_of,
};

/// Where a call was made from: its immediate caller (a return address) and
/// the caller's frame pointer, where the frame-pointer chain starts.
#[derive(Clone, Copy)]
pub struct CallSite {
    caller: u64,
    fp: u64,
}

impl CallSite {
    /// At a function's entry: the return address is at the stack pointer
    /// (one user read, the dearest thing a pair's programs do).
    #[inline(always)]
    pub fn at_entry(regs: *const pt_regs) -> Self {
        // SAFETY: `regs` points at the probe's saved registers for this run.
        let (sp, fp) = unsafe { ((*regs).rsp, (*regs).rbp) };
        // SAFETY: reads user memory through the helper, which fails safely.
        let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
        Self { caller, fp }
    }

    /// At a function's return (a uretprobe): the kernel has put the return
    /// address back in the instruction pointer before running the program,
    /// and the callee has restored the caller's frame pointer.
    #[inline(always)]
    pub fn at_return(regs: *const pt_regs) -> Self {
        // SAFETY: `regs` points at the probe's saved registers for this run.
        let (caller, fp) = unsafe { ((*regs).rip, (*regs).rbp) };
        Self { caller, fp }
    }
}

/// The site of an allocator call made by `thread`: the hash of its stack,
/// or of its immediate caller's alone for an unsampled call. A call site's
/// first call is walked whole, sampled or not, so that every call site has
/// a full stack to show. A stack is sent as a STACK record unless it was
/// sent before.
///
/// # Safety
///
/// `thread` is the current thread's state.
#[inline(always)]
pub unsafe fn site(call: CallSite, thread: *mut ThreadState) -> u64 {
    // SAFETY: as the caller promises.
    if !unsafe { sampled(thread) } {
        let (caller, _) = walk(call, 1, STACK_UNSAMPLED, |_, _| {});
        if stack_known(caller) {
            return caller;
        }
        send(call, 1, STACK_UNSAMPLED);
    }
    let (hash, _) = walk(call, MAX_STACK_DEPTH, 0, |_, _| {});
    if !stack_known(hash) {
        send(call, MAX_STACK_DEPTH, 0);
    }
    hash
}

/// True for the allocations whose whole stack is walked: every one, or one
/// in `STACK_SAMPLE_EVERY` on average, at random intervals counted down in
/// `thread` (a random number for each allocation would cost a helper call).
///
/// A subprogram of its own: inlined, the registers its helper call
/// clobbers pushed the allocation's programs past 64 bytes of stack.
///
/// # Safety
///
/// `thread` is the current thread's state.
#[inline(never)]
unsafe fn sampled(thread: *mut ThreadState) -> bool {
    let every = STACK_SAMPLE_EVERY.load();
    if every <= 1 {
        return true;
    }
    // SAFETY: as the caller promises; only this thread writes its state.
    unsafe {
        let left = (*thread).until_sample;
        if left > 0 {
            (*thread).until_sample = left - 1;
            return false;
        }
        // The next interval: 1 to 2 * every - 1 allocations, every on average.
        (*thread).until_sample = bpf_get_prandom_u32() % (2 * every - 1);
    }
    true
}

/// Writes the stack into a STACK record and marks it sent. The walk is done
/// again into the record itself: no per-CPU scratch that another task on
/// this CPU could overwrite, and a new stack is rare. The record is written
/// through a dynptr, whose offsets the helper checks as it runs: bounds the
/// verifier kept for each frame's slot would make every turn of the walk a
/// new state to verify. A subprogram of its own: its dynptr and header
/// would take the allocation's programs past 64 bytes of stack, onto a
/// private stack, for every allocation and not only a new stack's.
#[inline(never)]
fn send(call: CallSite, limit: usize, flags: u16) {
    let mut record = bpf_dynptr { __opaque: [0; 2] };
    let events = (&raw const EVENTS).cast_mut().cast::<c_void>();
    // SAFETY: `events` is the ring buffer map; `record` is a dynptr on this
    // program's stack, discarded or submitted on every path.
    let reserved = unsafe {
        bpf_ringbuf_reserve_dynptr(events, size_of::<StackEvent>() as u32, 0, &mut record)
    };
    if reserved != 0 {
        // SAFETY: a failed reservation's dynptr must still be discarded.
        unsafe { bpf_ringbuf_discard_dynptr(&mut record, 0) };
        count_lost(tgid_of(bpf_get_current_pid_tgid()));
        return;
    }
    let (hash, depth) = walk(call, limit, flags, |index, mut frame| {
        let offset = offset_of!(StackEvent, frames) + index * size_of::<u64>();
        // SAFETY: writes 8 bytes from a local; the helper refuses an
        // offset past the record's end.
        unsafe {
            bpf_dynptr_write(
                &record,
                offset as u32,
                (&raw mut frame).cast(),
                size_of::<u64>() as u32,
                0,
            )
        };
    });
    let mut header = StackHeader {
        kind: kind::STACK,
        depth: depth as u16,
        flags,
        hash,
    };
    // SAFETY: writes the header from a local at the record's start; the
    // record is then submitted.
    unsafe {
        bpf_dynptr_write(
            &record,
            0,
            (&raw mut header).cast(),
            size_of::<StackHeader>() as u32,
            0,
        );
        bpf_ringbuf_submit_dynptr(&mut record, 0);
    }
    remember_stack(hash);
}

/// The fields of a [`StackEvent`] before its frames.
#[repr(C)]
struct StackHeader {
    kind: u32,
    depth: u16,
    flags: u16,
    hash: u64,
}
const _: () = assert!(size_of::<StackHeader>() == offset_of!(StackEvent, frames));

/// Walks the user stack of `call`, at most `limit` frames: the immediate
/// caller (an allocator starts no frame of its own: glibc's are built
/// without frame pointers), then the frame-pointer chain from the caller's
/// frame. Hands each frame to `keep`; returns the hash and depth.
#[inline(always)]
fn walk(
    call: CallSite,
    limit: usize,
    flags: u16,
    mut keep: impl FnMut(usize, u64),
) -> (u64, usize) {
    let CallSite { caller, fp } = call;
    keep(0, caller);
    let mut hash = stack_hash_step(stack_hash_seed(flags), caller);
    if limit < 2 || fp == 0 {
        return (hash, 1);
    }
    // The caller's frame is read alone: many walks end there (a thread's
    // first function has no caller with a frame pointer).
    // SAFETY: reads user memory through the helper, which fails safely.
    let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
        return (hash, 1);
    };
    if ret == 0 {
        return (hash, 1);
    }
    keep(1, ret);
    hash = stack_hash_step(hash, ret);
    // Frames lie at rising addresses; anything else is not a frame chain.
    if next <= fp {
        return (hash, 2);
    }
    walk_on(next, 2, hash, limit, &mut keep)
}

/// Walks on from the frame at `fp`, frame `depth`, with the hash so far:
/// through copies of the stack a window at a time, one frame a turn of
/// `bpf_loop`, whose callback the verifier checks once, where a loop of its
/// own it would follow path by path through every turn. A function of its
/// own (a BPF subprogram), so that the window takes stack only in walks that
/// go this far: a program with 64 bytes of stack or more runs on a private
/// stack, where each user read pays hardened usercopy's checks.
#[inline(never)]
fn walk_on<K: FnMut(usize, u64)>(
    fp: u64,
    depth: usize,
    hash: u64,
    limit: usize,
    keep: &mut K,
) -> (u64, usize) {
    let mut walk = Walk {
        fp,
        depth,
        hash,
        window: StackWindow::new(),
        keep,
    };
    let turns = limit.min(MAX_STACK_DEPTH).saturating_sub(depth);
    // SAFETY: the callback takes the context it is given, `walk`, which
    // lives until bpf_loop returns.
    unsafe {
        bpf_loop(
            turns as u32,
            step::<K> as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    (walk.hash, walk.depth)
}

/// A walk in progress, handed to each turn of `bpf_loop`.
struct Walk<'a, K> {
    /// The frame to read next.
    fp: u64,
    /// Frames walked.
    depth: usize,
    /// Their hash.
    hash: u64,
    window: StackWindow,
    keep: &'a mut K,
}

/// One turn of the walk: reads the frame at `walk.fp`; 1 ends the walk.
extern "C" fn step<K: FnMut(usize, u64)>(_turn: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the context walk_on gave it, a live Walk.
    let walk = unsafe { &mut *walk.cast::<Walk<'_, K>>() };
    // A frame is (saved frame pointer, return address).
    let Some([next, ret]) = walk.window.frame(walk.fp) else {
        return 1;
    };
    if ret == 0 {
        return 1;
    }
    (walk.keep)(walk.depth, ret);
    walk.hash = stack_hash_step(walk.hash, ret);
    walk.depth += 1;
    // Frames lie at rising addresses; anything else is not a frame chain.
    if next <= walk.fp {
        return 1;
    }
    walk.fp = unbounded(next);
    0
}

/// Always 0, in writable memory: the verifier cannot know its value.
#[unsafe(no_mangle)]
static mut WALK_ZERO: u64 = 0;

/// `value`, with what the verifier knew of its bounds forgotten. The walk's
/// frame pointers only rise, and with bounds that differ at every frame the
/// verifier could not merge the walk's paths (a frame read from the copy,
/// or a copy made): their number doubled at each frame.
#[inline(always)]
fn unbounded(value: u64) -> u64 {
    // SAFETY: a plain read of a global no one writes.
    value ^ unsafe { ptr::read_volatile(&raw const WALK_ZERO) }
}

/// Words of user stack the walk copies at once. A user read's fixed cost is
/// several times what this size adds; frames are mostly small, so one read
/// serves several.
const WINDOW_WORDS: usize = 32;

/// A copy of the user stack from `base`, `len` bytes: the walk reads frames
/// from it while they lie inside, and copies again from one that does not.
struct StackWindow {
    base: u64,
    len: u64,
    /// Written by the copy up to `len`, and only read there.
    words: MaybeUninit<[u64; WINDOW_WORDS]>,
}

impl StackWindow {
    #[inline(always)]
    const fn new() -> Self {
        Self {
            base: 0,
            len: 0,
            words: MaybeUninit::uninit(),
        }
    }

    /// The two words at `fp`; `None` where the stack cannot be read.
    #[inline(always)]
    fn frame(&mut self, fp: u64) -> Option<[u64; 2]> {
        let mut offset = fp.wrapping_sub(self.base);
        if !offset.is_multiple_of(8) || offset.saturating_add(16) > self.len {
            self.fill(fp)?;
            offset = 0;
        }
        // The index's bounds come from the checks below alone: tied to the
        // window's length, they would make the verifier track that too.
        let index = (unbounded(offset) / 8) as usize;
        if index + 1 >= WINDOW_WORDS {
            return None;
        }
        let words = self.words.as_ptr().cast::<u64>();
        // SAFETY: both words lie inside the window, and below `len`, which
        // the copy wrote.
        Some(unsafe { [*words.add(index), *words.add(index + 1)] })
    }

    /// Copies the stack from `fp` to the end of its page, at most the
    /// window (at least one frame: a frame never lies past its page's end
    /// unless it straddles two), so that the copy does not fail where the
    /// stack's mapping ends.
    #[inline(always)]
    fn fill(&mut self, fp: u64) -> Option<()> {
        let to_page_end = PAGE_SIZE - (fp & (PAGE_SIZE - 1));
        let len = to_page_end.clamp(16, size_of::<[u64; WINDOW_WORDS]>() as u64);
        // SAFETY: the helper writes at most `len` bytes, all inside
        // `words`, and fails safely on memory it cannot read.
        let read = unsafe {
            bpf_probe_read_user_raw(
                self.words.as_mut_ptr().cast(),
                len as u32,
                fp as *const c_void,
            )
        };
        if read != 0 {
            return None;
        }
        // Paths through the walk meet at each frame: forget what differs.
        self.base = unbounded(fp);
        self.len = unbounded(len);
        Some(())
    }
}

const PAGE_SIZE: u64 = 4096;
