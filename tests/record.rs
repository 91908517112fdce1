//! `heapwatch record` end to end: real eBPF programs tracing real fixture
//! programs, their figures compared with valgrind's, run in the same test.

#[allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]
mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use support::{
    BpfBaseline, KillOnDrop, Summary, c_fixture_with, c_fixture_without_frame_pointers, fixture,
    functions, heapwatch,
    pprof::{Profile, go_pprof},
    record, record_with_env, sampled_functions, sigalloc_count, valgrind, valgrind_with,
};

/// Records `command` and runs it under valgrind; asserts equal summaries.
fn assert_matches_valgrind(flags: &[&str], command: &[&str]) -> support::Recorded {
    let recorded = record(flags, command);
    recorded.assert_exact();
    let mut ours = recorded.summaries();
    let mut theirs = valgrind(command);
    ours.sort();
    theirs.sort();
    assert_eq!(
        ours,
        theirs,
        "heapwatch vs valgrind for {command:?}\n{}",
        recorded.stderr()
    );
    recorded
}

fn live_sites(process: &Value) -> Vec<Value> {
    process["sites"].as_array().cloned().unwrap_or_default()
}

/// The site of `process` holding exactly `bytes` live bytes.
fn site_holding(process: &Value, bytes: u64) -> Value {
    live_sites(process)
        .into_iter()
        .find(|s| s["live_bytes"] == bytes)
        .unwrap_or_else(|| panic!("no site holding {bytes} bytes: {process}"))
}

#[test]
#[ignore = "needs root"]
fn c_leak_matches_valgrind_and_names_the_leaking_function() {
    let leak = fixture("leak");
    let recorded = assert_matches_valgrind(&[], &[leak.to_str().expect("utf-8 path")]);
    let site = site_holding(&recorded.processes()[0], 400_000_000);
    assert_eq!(site["live_blocks"], 100_000u64);
    assert_eq!(functions(&site)[..2], ["leak", "main"], "{site}");
    assert_eq!(
        site["stack"][0]["file"]
            .as_str()
            .map(|f| f.ends_with("leak.c")),
        Some(true)
    );
    let text = recorded.stderr();
    assert!(
        text.contains("400,000,000 bytes in 100,000 blocks still in use at exit, allocated at:"),
        "{text}"
    );
    assert!(text.contains(": leak (leak.c:"), "{text}");
}

#[test]
#[ignore = "needs root"]
fn a_deep_stack_is_walked_whole() {
    let program = fixture("deep_stack");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    let site = site_holding(&recorded.processes()[0], 4242);
    let mut expected = vec!["leak_here"];
    expected.extend(["descend"; 41]);
    expected.push("main");
    assert_eq!(functions(&site)[..expected.len()], expected, "{site}");
}

#[test]
#[ignore = "needs root"]
fn sampled_stacks_keep_the_byte_counts_of_valgrind() {
    let leak = fixture("leak");
    let command = [leak.to_str().expect("utf-8 path")];
    let theirs = valgrind(&command);
    for every in ["2", "1000000"] {
        let recorded = record(&["--stack-sample", every], &command);
        recorded.assert_exact();
        assert_eq!(recorded.summaries(), theirs, "--stack-sample {every}");
        let sites = live_sites(&recorded.processes()[0]);
        let blocks_with = |status: &str| -> u64 {
            sites
                .iter()
                .filter(|s| s["stack_status"] == status)
                .inspect(|s| assert_eq!(functions(s)[0], "leak", "{s}"))
                .map(|s| s["live_blocks"].as_u64().unwrap_or(0))
                .sum()
        };
        let (full, unsampled) = (blocks_with("full"), blocks_with("unsampled"));
        assert_eq!(
            full + unsampled,
            100_000,
            "--stack-sample {every}: {sites:?}"
        );
        if every == "2" {
            // Half of 100,000 at random: 45,000 to 55,000 is ten deviations wide.
            assert!((45_000..=55_000).contains(&full), "{full} blocks sampled");
        } else {
            assert!(full <= 10, "{full} blocks sampled at one in a million");
        }
        for site in sites.iter().filter(|s| s["stack_status"] == "unsampled") {
            assert_eq!(functions(site), ["leak"], "only the caller: {site}");
        }
        assert!(
            recorded
                .stderr()
                .contains("(callers not sampled: --stack-sample)"),
            "{}",
            recorded.stderr()
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_call_sites_first_allocation_keeps_its_full_stack_when_sampled() {
    let program = fixture("late_site");
    let recorded = assert_matches_valgrind(
        &["--stack-sample", "1000000"],
        &[program.to_str().expect("utf-8 path")],
    );
    let process = &recorded.processes()[0];
    let late = site_holding(process, 4321);
    assert_eq!(late["stack_status"], "full", "{late}");
    assert_eq!(
        functions(&late)[..3],
        ["late", "reach_late", "main"],
        "{late}"
    );
    let busy_blocks = |status: &str| -> u64 {
        live_sites(process)
            .iter()
            .filter(|s| s["stack_status"] == status && functions(s)[0] == "busy")
            .map(|s| s["live_blocks"].as_u64().unwrap_or(0))
            .sum()
    };
    // The thread's first allocation is sampled too: busy's first.
    assert!((1..=10).contains(&busy_blocks("full")), "{process}");
    assert!(busy_blocks("unsampled") >= 9_990, "{process}");
    let busy = live_sites(process)
        .into_iter()
        .find(|s| s["stack_status"] == "unsampled" && functions(s)[0] == "busy")
        .expect("busy's unsampled site");
    assert_eq!(sampled_functions(&busy)[..2], ["busy", "main"], "{busy}");
    assert!(
        recorded
            .stderr()
            .contains("(the callers sampled most often here:)"),
        "{}",
        recorded.stderr()
    );
}

#[test]
#[ignore = "needs root"]
fn a_program_without_frame_pointers_has_no_junk_frames_and_no_split_sites() {
    // Without frame pointers the register holds whatever the code put
    // there: the walk from main read a heap address as a caller, and the
    // same call site came out as two sites whose junk differed.
    let program = c_fixture_without_frame_pointers("late_site");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    let summary = recorded.summaries()[0];
    let process = &recorded.processes()[0];
    let sites = live_sites(process);
    for site in &sites {
        let frames = site["stack"].as_array().expect("a stack");
        assert!(
            frames.iter().all(|frame| frame["module"].is_string()),
            "a frame in no mapped file: {site}"
        );
    }
    let stacks: Vec<(Value, Vec<String>)> = sites
        .iter()
        .map(|site| (site["stack_status"].clone(), functions(site)))
        .collect();
    for (index, stack) in stacks.iter().enumerate() {
        assert!(
            !stacks[..index].contains(stack),
            "one stack shown as two sites: {process}"
        );
    }
    let late = site_holding(process, 4321);
    let busy = sites
        .iter()
        .find(|site| site != &&late)
        .expect("the busy call site");
    assert_eq!(
        busy["live_blocks"].as_u64(),
        Some(summary.in_use_blocks - 1),
        "every block but late's, at one site: {process}"
    );
}

#[test]
#[ignore = "needs root"]
fn inlined_calls_are_frames_of_their_own_in_text_and_pprof() {
    let program = fixture("inlined");
    let path = program.to_str().expect("utf-8 path");
    let pprof_path = support::tempfile_path("inlined.pb.gz");
    let recorded = record(
        &[
            "--format",
            "pprof",
            "-o",
            pprof_path.to_str().expect("utf-8"),
        ],
        &[path],
    );
    let summary = recorded.summaries()[0];
    assert_eq!(summary, valgrind(&[path])[0]);
    let profile = Profile::read(&pprof_path);
    let sample = profile.sample_at("inner");
    assert_eq!(
        profile.functions(sample)[..4],
        ["inner", "middle", "outer", "main"]
    );
    let leaf = &profile.locations[&sample.locations[0]];
    assert_eq!(leaf.lines.len(), 3, "one address, three calls: {leaf:?}");
    let text = String::from_utf8(
        heapwatch()
            .args(["record", "--", path])
            .output()
            .expect("run heapwatch record")
            .stderr,
    )
    .expect("utf-8");
    let calls: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.contains("still in use at exit"))
        .skip(1)
        .take(4)
        .collect();
    let named = |line: &str, function: &str| line.contains(&format!(": {function} (inlined.c:"));
    assert!(
        named(calls[0], "inner")
            && named(calls[1], "middle")
            && named(calls[2], "outer")
            && named(calls[3], "main"),
        "{text}"
    );
    let address = |line: &str| {
        line.split(": ")
            .next()
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    assert_eq!(
        address(calls[0]),
        address(calls[2]),
        "inlined calls at their function's address"
    );
    let _ = std::fs::remove_file(pprof_path);
}

#[test]
#[ignore = "needs root"]
fn processes_in_one_profile_are_told_apart_by_their_labels() {
    let leak = fixture("leak");
    let pprof_path = support::tempfile_path("two.pb.gz");
    let script = format!("{0} & {0}; wait", leak.display());
    let recorded = record(
        &[
            "--follow-forks",
            "--format",
            "pprof",
            "-o",
            pprof_path.to_str().expect("utf-8"),
        ],
        &["sh", "-c", &script],
    );
    let leakers: Vec<u64> = recorded
        .processes()
        .iter()
        .filter(|p| p["in_use_blocks"].as_u64() >= Some(100_000))
        .map(|p| p["pid"].as_u64().expect("a pid"))
        .collect();
    assert_eq!(leakers.len(), 2, "{}", recorded.stderr());
    let profile = Profile::read(&pprof_path);
    let at_leak: Vec<&support::pprof::Sample> = profile
        .samples
        .iter()
        .filter(|s| profile.functions(s).first().map(String::as_str) == Some("leak"))
        .collect();
    let mut pids: Vec<u64> = at_leak
        .iter()
        .flat_map(|s| &s.labels)
        .filter(|(key, _)| key == "pid")
        .map(|(_, pid)| pid.parse().expect("a pid"))
        .collect();
    pids.sort_unstable();
    let mut expected = leakers.clone();
    expected.sort_unstable();
    assert_eq!(
        pids, expected,
        "a sample per process, labelled with its pid"
    );
    let one = leakers[0].to_string();
    let focused = go_pprof(&[
        "-top",
        "-sample_index=inuse_objects",
        &format!("-tagfocus=pid={one}"),
        pprof_path.to_str().expect("utf-8"),
    ]);
    let summary = valgrind(&[leak.to_str().expect("utf-8 path")])[0];
    assert!(
        focused.lines().any(|l| l
            .trim_start()
            .starts_with(&format!("{} ", summary.in_use_blocks))
            && l.ends_with(" leak")),
        "one process's leak alone: {focused}"
    );
    let _ = std::fs::remove_file(pprof_path);
}

#[test]
#[ignore = "needs root"]
fn rust_boxes_dropped_each_time_match_valgrind() {
    let program = fixture("rust_drop");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    let summary = recorded.summaries()[0];
    assert!(summary.allocs >= 100_000, "{summary:?}");
    let boxes = live_sites(&recorded.processes()[0])
        .iter()
        .filter(|s| functions(s).iter().any(|f| f.contains("make_and_drop")))
        .count();
    assert_eq!(boxes, 0, "the boxes are all freed");
}

#[test]
#[ignore = "needs root"]
fn cpp_new_and_delete_match_valgrind() {
    let program = fixture("cpp_new");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    let sites = live_sites(&recorded.processes()[0]);
    let list = sites
        .iter()
        .find(|s| s["live_blocks"] == 10u64)
        .unwrap_or_else(|| panic!("no site with the 10 leaked nodes: {sites:?}"));
    assert_eq!(functions(list)[..2], ["make_list(int)", "main"], "{list}");
    let array = sites
        .iter()
        .find(|s| s["live_bytes"] == 777u64)
        .unwrap_or_else(|| panic!("no site with the leaked array: {sites:?}"));
    assert_eq!(functions(array)[0], "main", "{array}");
}

#[test]
#[ignore = "needs root"]
fn every_malloc_family_function_matches_valgrind() {
    let program = fixture("malloc_family");
    assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
}

#[test]
#[ignore = "needs root"]
fn failed_reallocs_and_pvalloc_match_the_programs_own_count() {
    let program = fixture("malloc_edge");
    let recorded = record(&[], &[program.to_str().expect("utf-8 path")]);
    recorded.assert_exact();
    let stdout = String::from_utf8_lossy(&recorded.output.stdout);
    let expect_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("expect: "))
        .unwrap_or_else(|| panic!("the fixture printed no expectation: {stdout}"));
    let value = |key: &str| -> u64 {
        expect_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {expect_line}"))
    };
    let expected = Summary {
        in_use_bytes: value("in_use_bytes"),
        in_use_blocks: value("in_use_blocks"),
        allocs: value("allocs"),
        frees: value("frees"),
        bytes_allocated: value("bytes_allocated"),
    };
    assert_eq!(recorded.summaries()[0], expected, "{}", recorded.stderr());
}

#[test]
#[ignore = "needs root"]
fn blocks_freed_by_other_threads_match_valgrind() {
    let program = fixture("threads");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    assert!(recorded.summaries()[0].frees >= 40_000);
    assert_exact_though_threads_exited(&recorded);
}

/// The recording's one process is exact: glibc's per-thread caches, freed
/// again as its threads exited, are counted apart, not as unmatched frees.
fn assert_exact_though_threads_exited(recorded: &support::Recorded) {
    let process = &recorded.processes()[0];
    assert_eq!(process["unmatched_frees"], 0, "{process}");
    assert_eq!(process["inexact"], false, "{process}");
    assert!(
        process["thread_cache_frees"].as_u64() > Some(0),
        "exiting threads emptied their caches: {process}"
    );
}

#[test]
#[ignore = "needs root"]
fn threads_exiting_while_others_allocate_match_valgrind() {
    let program = fixture("thread_storm");
    let recorded = assert_matches_valgrind(&[], &[program.to_str().expect("utf-8 path")]);
    assert!(recorded.summaries()[0].allocs >= 20 * 16 * 501);
    assert_exact_though_threads_exited(&recorded);
}

#[test]
#[ignore = "needs root"]
fn threads_sharing_a_state_slot_match_valgrind() {
    let program = fixture("slot_collision");
    let recorded = assert_matches_valgrind(
        &["--thread-slots", "1"],
        &[program.to_str().expect("utf-8 path")],
    );
    let leaked: Vec<u64> = live_sites(&recorded.processes()[0])
        .iter()
        .filter_map(|site| site["live_bytes"].as_u64())
        .collect();
    assert!(
        leaked.contains(&77_770) && leaked.contains(&111_100),
        "each thread's own blocks at its own site: {leaked:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_forked_child_that_leaks_matches_valgrind_per_process() {
    let program = fixture("fork_leak");
    let recorded = assert_matches_valgrind(
        &["--follow-forks"],
        &[program.to_str().expect("utf-8 path")],
    );
    let processes = recorded.processes();
    assert_eq!(processes.len(), 2, "parent and child: {processes:?}");
    let child = &processes[1];
    let leak = live_sites(child)
        .into_iter()
        .find(|s| s["live_blocks"] == 5u64)
        .unwrap_or_else(|| panic!("the child's 5 leaked blocks: {child}"));
    assert_eq!(functions(&leak)[0], "child_leak");
}

#[test]
#[ignore = "needs root"]
fn without_follow_forks_only_the_command_is_traced() {
    let program = fixture("fork_leak");
    let recorded = record(&[], &[program.to_str().expect("utf-8 path")]);
    let summaries = recorded.summaries();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!((summaries[0].allocs, summaries[0].frees), (1, 1));
}

#[test]
#[ignore = "needs root"]
fn coreutils_match_valgrind() {
    let input = support::tempfile_path("lines.txt");
    std::fs::write(&input, "pear\napple\nfig\napple\n").expect("write the input file");
    let input = input.to_str().expect("utf-8 path");
    for command in [
        vec!["ls", "-l", "/usr"],
        vec!["sort", input],
        vec!["uniq", "-c", input],
        vec!["wc", input],
        vec!["seq", "1", "1000"],
        vec!["du", "-s", "/usr/share/doc"],
    ] {
        assert_matches_valgrind(&[], &command);
    }
    let _ = std::fs::remove_file(input);
}

#[test]
#[ignore = "needs root"]
fn exit_status_is_the_commands() {
    let baseline = BpfBaseline::take();
    let status = heapwatch()
        .args(["record", "--", "sh", "-c", "exit 3"])
        .stderr(Stdio::null())
        .status()
        .expect("run heapwatch");
    assert_eq!(status.code(), Some(3));
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn a_command_that_allocates_nothing_still_gets_its_summary() {
    let recorded = assert_matches_valgrind(&[], &["true"]);
    assert_eq!(recorded.summaries()[0].allocs, 0);
    assert!(
        recorded
            .stderr()
            .contains("All heap blocks were freed -- no leaks are possible")
    );
}

#[test]
#[ignore = "needs root"]
fn a_crashing_or_killed_command_leaves_nothing_attached() {
    let crash = fixture("crash");
    let crash = crash.to_str().expect("utf-8 path");
    let aborted = record(&[], &[crash]);
    assert_eq!(aborted.output.status.code(), Some(128 + libc::SIGABRT));
    assert_eq!(aborted.report["status"]["killed"], libc::SIGABRT);
    assert_eq!(
        aborted.summaries()[0].in_use_blocks,
        1,
        "{}",
        aborted.stderr()
    );
    let killed = record(&[], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.output.status.code(), Some(128 + libc::SIGKILL));
}

#[test]
#[ignore = "needs root"]
fn heapwatch_killed_mid_recording_leaves_nothing_attached() {
    let crash = fixture("crash");
    let baseline = BpfBaseline::take();
    let recorder = heapwatch()
        .args(["record", "--"])
        .arg(&crash)
        .arg("wait")
        .stderr(Stdio::null())
        .spawn()
        .expect("start heapwatch record");
    let mut recorder = KillOnDrop::new(recorder);
    let deadline = Instant::now() + Duration::from_secs(20);
    while baseline.new_links().is_empty() || child_of(recorder.pid()).is_none() {
        assert!(
            Instant::now() < deadline,
            "heapwatch never attached and started the command"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let command = child_of(recorder.pid()).map(KillOnDrop::pid_only);
    recorder.kill_now();
    baseline.assert_nothing_left();
    drop(command);
}

/// The first child of process `pid`.
fn child_of(pid: u32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Runs `command`, expects exit `code` and every one of `messages` on
/// stderr, and nothing left attached.
fn assert_refused(command: &mut Command, code: i32, messages: &[&str]) {
    let baseline = BpfBaseline::take();
    let output = command.output().expect("run heapwatch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    for message in messages {
        assert!(stderr.contains(message), "no `{message}` in: {stderr}");
    }
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn the_benchmark_floor_runs_a_command_and_leaves_nothing_attached() {
    let baseline = BpfBaseline::take();
    let churn = fixture("churn");
    for flags in [&[][..], &["--at-entry"]] {
        let output = heapwatch()
            .arg("floor")
            .args(flags)
            .arg("--")
            .arg(&churn)
            .args(["1", "60", "1000"])
            .output()
            .expect("run heapwatch floor");
        assert_eq!(output.status.code(), Some(0), "{flags:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.starts_with("1000 pairs in "), "{flags:?}: {stdout}");
        let status = heapwatch()
            .arg("floor")
            .args(flags)
            .args(["--", "sh", "-c", "exit 3"])
            .status()
            .expect("run heapwatch floor");
        assert_eq!(status.code(), Some(3), "the command's status, {flags:?}");
    }
    assert_refused(
        heapwatch().args(["floor", "--", "no-such-command-heapwatch"]),
        127,
        &["no-such-command-heapwatch: command not found"],
    );
    baseline.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn a_missing_command_is_a_clear_error() {
    assert_refused(
        heapwatch().args(["record", "--", "no-such-command-heapwatch"]),
        127,
        &["no-such-command-heapwatch: command not found"],
    );
}

#[test]
#[ignore = "needs root"]
fn a_missing_allocator_library_is_a_clear_error() {
    assert_refused(
        heapwatch().args(["record", "--libc", "/no/such/libc.so.6", "--", "true"]),
        1,
        &["allocator library /no/such/libc.so.6 does not exist"],
    );
}

#[test]
#[ignore = "needs root"]
fn a_library_without_an_allocator_is_a_clear_error() {
    let not_libc = fixture("leak");
    assert_refused(
        heapwatch()
            .args(["record", "--libc"])
            .arg(&not_libc)
            .args(["--", "true"]),
        1,
        &["to malloc in", "does not appear"],
    );
}

#[test]
#[ignore = "needs root"]
fn an_unprivileged_user_is_told_what_is_missing() {
    assert_refused(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_heapwatch"))
            .args(["record", "--", "true"]),
        1,
        &["CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN", "run it with sudo"],
    );
}

#[test]
#[ignore = "needs root"]
fn the_leak_as_pprof_and_flame_graph() {
    let leak = fixture("leak");
    let pprof_path = support::tempfile_path("leak.pb.gz");
    let svg_path = support::tempfile_path("leak.svg");
    for (format, path) in [("pprof", &pprof_path), ("flamegraph", &svg_path)] {
        let output = heapwatch()
            .args(["record", "--format", format, "-o"])
            .arg(path)
            .arg("--")
            .arg(&leak)
            .output()
            .expect("run heapwatch record");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let profile = Profile::read(&pprof_path);
    assert_eq!(
        profile.sample_types,
        [
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes[dflt]"
        ],
        "Go's heap profile's types, in use space shown by default"
    );
    assert_eq!(
        (profile.period_type.as_str(), profile.period.as_str()),
        ("space bytes", "1")
    );
    let year: u64 = profile.time[..4].parse().expect("a year first");
    let this_year = 1970
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            / 31_556_952;
    assert!(
        year.abs_diff(this_year) <= 1,
        "taken now, not in 1970: {}",
        profile.time
    );
    assert!(profile.duration.is_some(), "{profile:?}");
    let summary = valgrind(&[leak.to_str().expect("utf-8 path")])[0];
    let sample = profile.sample_at("leak");
    let inuse = |name| sample.values[profile.value_index(name)] as u64;
    assert_eq!(
        (inuse("inuse_space"), inuse("inuse_objects")),
        (summary.in_use_bytes, summary.in_use_blocks),
        "valgrind's figures"
    );
    assert!(
        sample
            .labels
            .contains(&("comm".to_owned(), "leak".to_owned()))
            && sample.labels.iter().any(|(key, _)| key == "pid"),
        "{sample:?}"
    );
    let mapping = profile.leaf_mapping(sample).expect("the leak's mapping");
    let leaf = &profile.locations[&sample.locations[0]];
    assert!(
        (mapping.start..mapping.limit).contains(&leaf.address) && mapping.offset > 0,
        "a mapping with its range and offset: {mapping:?}"
    );
    assert_eq!(
        (Path::new(&mapping.file), mapping.build_id.as_str()),
        (leak.as_path(), support::readelf_build_id(&leak).as_str())
    );
    let top = go_pprof(&[
        "-top",
        "-sample_index=inuse_space",
        pprof_path.to_str().expect("utf-8"),
    ]);
    assert!(top.lines().any(|l| l.ends_with(" leak")), "{top}");
    let svg = std::fs::read_to_string(&svg_path).expect("read the SVG");
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "an SVG");
    assert!(
        svg.contains(">leak (400,000,000 bytes"),
        "the leak's frame in the SVG"
    );
    let _ = std::fs::remove_file(pprof_path);
    let _ = std::fs::remove_file(svg_path);
}

#[test]
fn a_binary_rendering_needs_an_output_file() {
    let output = heapwatch()
        .args(["record", "--format", "pprof", "--", "true"])
        .output()
        .expect("run heapwatch");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--format pprof needs -o FILE"), "{stderr}");
}

/// How heapwatch attaches its uprobes, as `HEAPWATCH_UPROBE_LINKS` asks, and
/// the kind of BPF link each way makes.
const ATTACHMENTS: [(&[(&str, &str)], &str); 2] = [
    (&[], "uprobe_multi"),
    (&[("HEAPWATCH_UPROBE_LINKS", "perf-event")], "perf_event"),
];

#[test]
#[ignore = "needs root"]
fn both_ways_of_attaching_trace_exactly_and_leave_nothing() {
    let leak = fixture("leak");
    let command = [leak.to_str().expect("utf-8 path")];
    let theirs = valgrind(&command);
    for (env, link_type) in ATTACHMENTS {
        let recorded = record_with_env(&[], &command, env);
        recorded.assert_exact();
        assert_eq!(recorded.summaries(), theirs, "{env:?}");

        let baseline = BpfBaseline::take();
        let mut running = heapwatch()
            .envs(env.iter().copied())
            .args(["record", "--", "sleep", "3"])
            .stderr(Stdio::null())
            .spawn()
            .expect("run heapwatch record");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut types = baseline.new_link_types();
        while !types.iter().any(|t| t == link_type) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            types = baseline.new_link_types();
        }
        let status = running.wait().expect("wait for heapwatch record");
        assert!(status.success(), "{env:?}: {status}");
        assert!(
            types.iter().any(|t| t == link_type),
            "{env:?}: links of kinds {types:?}, not {link_type}"
        );
        baseline.assert_nothing_left();
    }
}

#[test]
#[ignore = "needs root"]
fn programs_on_other_allocators_match_valgrind() {
    let leak = |binary: &str, compiler: &str, args: &[&str]| {
        let path = c_fixture_with("leak", binary, compiler, args);
        path.to_str().expect("utf-8 path").to_owned()
    };
    let jemalloc = leak("leak_jemalloc", "gcc", &["-ljemalloc"]);
    let glibc = leak("leak_glibc", "gcc", &[]);
    let static_musl = leak("leak_musl_static", "musl-gcc", &["-static"]);
    // (what runs, LD_PRELOAD, valgrind's name for the allocator's library,
    // its file, whether valgrind's summary is the program's own)
    let cases = [
        (&jemalloc, "", "*jemalloc*", "libjemalloc.so.2", true),
        (
            &glibc,
            "libmimalloc.so.2",
            "*mimalloc*",
            "libmimalloc.so.2",
            true,
        ),
        // Under valgrind, tcmalloc makes two small allocations (24 bytes)
        // that it does not make bare: its leak's site is compared instead.
        (
            &glibc,
            "libtcmalloc_minimal.so.4",
            "*tcmalloc*",
            "libtcmalloc_minimal.so.4",
            false,
        ),
    ];
    for (program, preload, soname, library, summary_comparable) in cases {
        let env = [("LD_PRELOAD", preload)];
        let env = if preload.is_empty() {
            &env[..0]
        } else {
            &env[..]
        };
        let theirs = valgrind_with(
            &[&format!("--soname-synonyms=somalloc={soname}")],
            env,
            &[program],
        );
        let recorded = record_with_env(&[], &[program], env);
        recorded.assert_exact();
        if summary_comparable {
            assert_eq!(
                recorded.summaries(),
                theirs,
                "{library}\n{}",
                recorded.stderr()
            );
        }
        assert!(
            recorded.report["allocator_library"]
                .as_str()
                .is_some_and(|path| path.ends_with(library)),
            "{library} not probed: {}",
            recorded.report["allocator_library"]
        );
        let site = site_holding(&recorded.processes()[0], 400_000_000);
        assert_eq!(site["live_blocks"], 100_000u64, "{library}: {site}");
        assert_eq!(functions(&site)[..2], ["leak", "main"], "{library}: {site}");
    }
    // valgrind cannot replace a static program's malloc: the same source on
    // glibc gives the figures.
    let theirs = valgrind(&[&glibc]);
    let recorded = record(&[], &[&static_musl]);
    recorded.assert_exact();
    assert_eq!(
        recorded.summaries(),
        theirs,
        "static musl\n{}",
        recorded.stderr()
    );
    assert_eq!(recorded.report["allocator_library"], static_musl.as_str());
}

#[test]
#[ignore = "needs root"]
fn allocations_in_a_signal_handler_are_counted_exactly() {
    // valgrind runs signal handlers at its own points, never inside malloc:
    // the program's own count is the reference.
    let sigalloc = fixture("sigalloc");
    let recorded = record(&[], &[sigalloc.to_str().expect("utf-8 path")]);
    let (blocks, bytes, signals) = sigalloc_count(&recorded.output.stdout);
    assert!(
        signals >= 1_000,
        "only {signals} signals: the test proves little"
    );
    recorded.assert_exact();
    let summaries = recorded.summaries();
    let summary = summaries.first().expect("one process");
    assert_eq!(
        (summary.in_use_blocks, summary.in_use_bytes),
        (blocks, bytes),
        "in use at exit against the program's own count ({signals} signals handled)"
    );
}
