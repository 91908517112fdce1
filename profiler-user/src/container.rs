//! The container a process runs in, parsed from the text of /proc/PID/cgroup,
//! so that per-process metrics and `heapwatch ps` can name it.

/// The container runtime, as its cgroup path names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Docker: `docker-<id>.scope`, or `/docker/<id>` with the cgroupfs driver.
    Docker,
    /// Podman: `libpod-<id>.scope`, or `libpod-<id>` with the cgroupfs driver.
    Podman,
    /// containerd's CRI plugin: `cri-containerd-<id>.scope`.
    Containerd,
    /// CRI-O: `crio-<id>.scope`, or `crio-<id>` with the cgroupfs driver.
    CriO,
}

impl Runtime {
    /// The runtime's name, as its own commands spell it.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        }
    }

    /// The runtime that names its containers' cgroups `<prefix>-<id>`.
    fn from_prefix(prefix: &str) -> Option<Runtime> {
        match prefix {
            "docker" => Some(Runtime::Docker),
            "libpod" => Some(Runtime::Podman),
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::CriO),
            // Among them `libpod-conmon` and `crio-conmon`: conmon watches a
            // container from outside it, so its cgroup is no container's.
            _ => None,
        }
    }
}

/// The container a process runs in, from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    /// The container id: 64 hex digits (shown shortened elsewhere).
    pub id: String,
    /// The runtime, where the path says it.
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod's uid (with dashes, as Kubernetes writes it), where the path says it.
    pub pod_uid: Option<String>,
}

/// The hex digits of a container id.
const ID_LEN: usize = 64;

/// The hex digits of an id that `docker ps` shows.
const SHORT_ID_LEN: usize = 12;

/// The cgroup v1 hierarchies read: every runtime puts its containers in them,
/// and a v1 host mounts at least one (name=systemd wherever systemd runs).
const V1_HIERARCHIES: [&str; 3] = ["pids", "memory", "name=systemd"];

/// What the kernel appends to the v2 path of a cgroup already removed, as a
/// zombie's can be; the process was in that container all the same.
const DELETED: &str = " (deleted)";

impl Container {
    /// The container of a /proc/PID/cgroup text, None for a process in no container.
    pub fn from_cgroup(text: &str) -> Option<Container> {
        // Each line read names the same cgroup on a sane host, but on a hybrid
        // one the v2 line is systemd's alone, so any line may be the one that
        // says container.
        text.lines()
            .filter_map(cgroup_path)
            .find_map(container_in_path)
    }

    /// The id's first 12 hex digits, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        // The id field is public, so it may not be the 64 digits from_cgroup makes.
        self.id.get(..SHORT_ID_LEN).unwrap_or(&self.id)
    }
}

/// The path of a /proc/PID/cgroup line (`hierarchy:controllers:path`) worth
/// reading: the cgroup v2 line, or a line of one of [`V1_HIERARCHIES`].
fn cgroup_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    let v2 = hierarchy == "0" && controllers.is_empty();
    let v1 = controllers
        .split(',')
        .any(|controller| V1_HIERARCHIES.contains(&controller));
    (v2 || v1).then(|| path.strip_suffix(DELETED).unwrap_or(path))
}

/// The innermost container on a cgroup path, with the pod above it, if any.
fn container_in_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Innermost, because containers nest: kind and minikube run each node in
    // a container and the pods' containers inside it.
    let (index, id, runtime) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, segment)| {
            let parent = index.checked_sub(1).and_then(|p| segments.get(p));
            let (id, runtime) = container_segment(segment, parent.copied())?;
            Some((index, id, runtime))
        })?;
    Some(Container {
        id: id.to_owned(),
        runtime,
        pod_uid: segments.get(..index).and_then(pod_uid),
    })
}

/// The id and runtime of the container whose cgroup directory is `segment`.
fn container_segment<'a>(
    segment: &'a str,
    parent: Option<&str>,
) -> Option<(&'a str, Option<Runtime>)> {
    if is_container_id(segment) {
        // cgroupfs drivers name the directory by the bare id; of them only
        // docker's parent directory says whose it is.
        let runtime = (parent == Some("docker")).then_some(Runtime::Docker);
        return Some((segment, runtime));
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let (prefix, id) = name.rsplit_once('-')?;
    let runtime = Runtime::from_prefix(prefix)?;
    is_container_id(id).then_some((id, Some(runtime)))
}

/// The uid of the Kubernetes pod whose cgroup is one of `segments`.
fn pod_uid(segments: &[&str]) -> Option<String> {
    if let Some(uid) = segments.iter().find_map(|s| systemd_pod_uid(s)) {
        return Some(uid);
    }
    // A bare `pod<uid>` directory is a pod's only under the kubelet's root.
    let kubepods = segments.iter().position(|s| *s == "kubepods")?;
    let below = segments.get(kubepods + 1..)?;
    below.iter().find_map(|s| cgroupfs_pod_uid(s))
}

/// The pod uid in a systemd driver's pod slice, `kubepods[-<qos>]-pod<uid>.slice`
/// (under a custom kubelet root, `<root>-kubepods-…`).
fn systemd_pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice")?;
    let (parents, pod) = name.rsplit_once("-pod")?;
    if !parents.split('-').any(|parent| parent == "kubepods") || pod.contains('-') {
        return None;
    }
    // systemd takes a dash in a unit name for a level of hierarchy, so the
    // kubelet writes the uid's dashes as underscores.
    let uid = pod.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// The pod uid in a cgroupfs driver's pod directory, `pod<uid>`.
fn cgroupfs_pod_uid(segment: &str) -> Option<String> {
    let uid = segment.strip_prefix("pod")?;
    is_pod_uid(uid).then(|| uid.to_owned())
}

/// Whether `uid` is a pod uid as Kubernetes writes it: a UUID, or for a static
/// pod the 32 hex digits of its manifest's hash.
fn is_pod_uid(uid: &str) -> bool {
    let groups: Vec<usize> = uid.split('-').map(str::len).collect();
    let shaped = groups == [8, 4, 4, 4, 12] || groups == [32];
    shaped && uid.bytes().all(|b| b == b'-' || is_lower_hex(b))
}

/// Whether `text` is a container id; runtimes write ids in lowercase only.
fn is_container_id(text: &str) -> bool {
    text.len() == ID_LEN && text.bytes().all(is_lower_hex)
}

/// Whether `byte` is a hex digit as runtimes and the kubelet write them.
fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: &str = "3f9a2c71b0d84e6f5a1c2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071";
    const UID: &str = "8f2b6c1e-4d3a-4b9e-a7c5-1e2f3a4b5c6d";
    const UID_SYSTEMD: &str = "8f2b6c1e_4d3a_4b9e_a7c5_1e2f3a4b5c6d";

    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    /// A cgroup v1 host's text, every hierarchy at `path`.
    fn v1(path: &str) -> String {
        format!(
            "12:hugetlb:{path}\n11:pids:{path}\n10:cpu,cpuacct:{path}\n9:memory:{path}\n\
             8:net_cls,net_prio:{path}\n7:devices:{path}\n6:blkio:{path}\n5:freezer:{path}\n\
             4:cpuset:{path}\n3:perf_event:{path}\n2:rdma:/\n1:name=systemd:{path}\n"
        )
    }

    fn container(runtime: Option<Runtime>, pod_uid: Option<&str>) -> Option<Container> {
        Some(Container {
            id: ID.to_owned(),
            runtime,
            pod_uid: pod_uid.map(str::to_owned),
        })
    }

    #[test]
    fn runtime_names() {
        assert_eq!(Runtime::Docker.name(), "docker");
        assert_eq!(Runtime::Podman.name(), "podman");
        assert_eq!(Runtime::Containerd.name(), "containerd");
        assert_eq!(Runtime::CriO.name(), "cri-o");
    }

    #[test]
    fn short_id_is_the_first_12_digits() {
        let found = Container::from_cgroup(&v2(&format!("/docker/{ID}"))).expect("a container");
        assert_eq!(found.short_id(), "3f9a2c71b0d8");
        let short = Container {
            id: "abc".to_owned(),
            runtime: None,
            pod_uid: None,
        };
        assert_eq!(short.short_id(), "abc");
    }

    #[test]
    fn docker_with_either_driver() {
        let docker = container(Some(Runtime::Docker), None);
        let cgroupfs = format!("/docker/{ID}");
        assert_eq!(Container::from_cgroup(&v2(&cgroupfs)), docker);
        assert_eq!(Container::from_cgroup(&v1(&cgroupfs)), docker);
        let systemd = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(Container::from_cgroup(&v2(&systemd)), docker);
        assert_eq!(Container::from_cgroup(&v1(&systemd)), docker);
        let rootless = format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope");
        assert_eq!(Container::from_cgroup(&v2(&rootless)), docker);
    }

    #[test]
    fn podman_with_either_driver_and_its_nested_cgroup() {
        let podman = container(Some(Runtime::Podman), None);
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/libpod_parent/libpod-{ID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
        ] {
            assert_eq!(Container::from_cgroup(&v2(&path)), podman, "{path}");
        }
        let v1_systemd = v1(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(Container::from_cgroup(&v1_systemd), podman);
    }

    #[test]
    fn conmon_is_no_container() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"
            ),
        ] {
            assert_eq!(Container::from_cgroup(&v2(&path)), None, "{path}");
            assert_eq!(Container::from_cgroup(&v1(&path)), None, "{path}");
        }
    }

    #[test]
    fn containerd_in_kubernetes_with_either_driver() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        );
        let expected = container(Some(Runtime::Containerd), Some(UID));
        assert_eq!(Container::from_cgroup(&v2(&systemd)), expected);
        assert_eq!(Container::from_cgroup(&v1(&systemd)), expected);
        // cgroupfs names the directory by the bare id, whichever runtime made it.
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/{ID}");
        let expected = container(None, Some(UID));
        assert_eq!(Container::from_cgroup(&v2(&cgroupfs)), expected);
        assert_eq!(Container::from_cgroup(&v1(&cgroupfs)), expected);
    }

    #[test]
    fn cri_o_with_either_driver() {
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
        );
        let expected = container(Some(Runtime::CriO), Some(UID));
        assert_eq!(Container::from_cgroup(&v2(&systemd)), expected);
        assert_eq!(Container::from_cgroup(&v1(&systemd)), expected);
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(Container::from_cgroup(&v2(&cgroupfs)), expected);
    }

    #[test]
    fn pod_uids_of_every_qos_class() {
        let systemd = [
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice"
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice"
            ),
        ];
        for pod in systemd {
            let path = format!("{pod}/cri-containerd-{ID}.scope");
            let expected = container(Some(Runtime::Containerd), Some(UID));
            assert_eq!(Container::from_cgroup(&v2(&path)), expected, "{path}");
        }
        let cgroupfs = [
            format!("/kubepods/pod{UID}"),
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods/besteffort/pod{UID}"),
        ];
        for pod in cgroupfs {
            let path = format!("{pod}/{ID}");
            let expected = container(None, Some(UID));
            assert_eq!(Container::from_cgroup(&v2(&path)), expected, "{path}");
        }
    }

    #[test]
    fn a_static_pods_uid_is_its_manifests_hash() {
        let uid = "d5b4bcf2c1e1a3f9b8e7d6c5b4a39281";
        let path = format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope");
        let expected = container(Some(Runtime::CriO), Some(uid));
        assert_eq!(Container::from_cgroup(&v2(&path)), expected);
    }

    #[test]
    fn the_innermost_container_of_nested_ones() {
        let node = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        // kind: the kubelet's root is kubelet.slice inside the node's container.
        let kind = format!(
            "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/\
             cri-containerd-{ID}.scope"
        );
        let expected = container(Some(Runtime::Containerd), Some(UID));
        assert_eq!(Container::from_cgroup(&v2(&kind)), expected);
        let dind = format!("/docker/{node}/docker/{ID}");
        let expected = container(Some(Runtime::Docker), None);
        assert_eq!(Container::from_cgroup(&v2(&dind)), expected);
        // The node itself, outside any pod.
        let kubelet = format!("/system.slice/docker-{node}.scope/kubelet.slice");
        let found = Container::from_cgroup(&v2(&kubelet)).expect("the node's container");
        assert_eq!(found.id, node);
    }

    #[test]
    fn a_pod_without_a_container_is_none_and_a_pod_is_only_above_its_container() {
        let pod_only = format!("/kubepods/burstable/pod{UID}");
        assert_eq!(Container::from_cgroup(&v2(&pod_only)), None);
        let pod_below = format!("/system.slice/docker-{ID}.scope/kubepods/pod{UID}");
        let expected = container(Some(Runtime::Docker), None);
        assert_eq!(Container::from_cgroup(&v2(&pod_below)), expected);
        // A bare pod directory outside the kubelet's root is not a pod.
        let stray = format!("/misc/pod{UID}/crio-{ID}");
        let expected = container(Some(Runtime::CriO), None);
        assert_eq!(Container::from_cgroup(&v2(&stray)), expected);
    }

    #[test]
    fn host_processes_are_in_no_container() {
        for path in [
            "/user.slice/user-0.slice/session-1.scope",
            "/init.scope",
            "/",
            "/system.slice/containerd.service",
            "/system.slice/docker.service",
            "/kubepods.slice",
        ] {
            assert_eq!(Container::from_cgroup(&v2(path)), None, "{path}");
            assert_eq!(Container::from_cgroup(&v1(path)), None, "{path}");
        }
    }

    #[test]
    fn a_hybrid_hosts_v1_lines_name_the_container() {
        let path = format!("/docker/{ID}");
        let text = format!(
            "12:pids:{path}\n9:memory:{path}\n1:name=systemd:{path}\n\
             0::/system.slice/containerd.service\n"
        );
        let expected = container(Some(Runtime::Docker), None);
        assert_eq!(Container::from_cgroup(&text), expected);
    }

    #[test]
    fn only_the_chosen_v1_hierarchies_are_read() {
        let text = format!(
            "4:pids:/user.slice\n3:cpu,cpuacct:/docker/{ID}\n2:memory:/user.slice\n\
             1:name=systemd:/user.slice/user-0.slice/session-1.scope\n"
        );
        assert_eq!(Container::from_cgroup(&text), None);
        let memory_only = format!("4:pids:/\n3:cpu:/\n2:memory:/docker/{ID}\n1:freezer:/\n");
        let expected = container(Some(Runtime::Docker), None);
        assert_eq!(Container::from_cgroup(&memory_only), expected);
    }

    #[test]
    fn a_removed_cgroup_still_names_its_container() {
        let text = format!("0::/system.slice/docker-{ID}.scope (deleted)\n");
        let expected = container(Some(Runtime::Docker), None);
        assert_eq!(Container::from_cgroup(&text), expected);
    }

    #[test]
    fn hostile_text_is_no_container() {
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        for text in [
            String::new(),
            "\n\n\n".to_owned(),
            "garbage".to_owned(),
            "::::".to_owned(),
            format!("docker-{ID}.scope"),
            format!("0:/docker/{ID}"),
            format!("7:cpuset:/docker/{ID}"),
            v2(&format!("/docker/{upper}")),
            v2(&format!("/system.slice/docker-{upper}.scope")),
            v2(&format!("/docker/{short}")),
            v2(&format!("/system.slice/docker-{short}.scope")),
            v2(&format!("/docker/{long}")),
            v2(&format!("/system.slice/docker-{long}.scope")),
            v2(&format!("/machine.slice/rkt-{ID}.scope")),
            v2(&format!("/system.slice/docker-{ID}.service")),
            v2(&format!("/system.slice/docker-{ID}.scope.scope")),
            v2(&format!("/docker/{ID}x")),
            v2(&format!("/docker/-{ID}")),
            v2("/docker/\u{e9}\u{e9}\u{e9}"),
        ] {
            assert_eq!(Container::from_cgroup(&text), None, "{text:?}");
        }
    }

    #[test]
    fn malformed_pod_uids_are_no_pod() {
        let upper = UID_SYSTEMD.to_uppercase();
        let mixed = "8f2b6c1e_4d3a-4b9e_a7c5_1e2f3a4b5c6d";
        let short = &UID_SYSTEMD[..35];
        for pod in [upper.as_str(), mixed, short, "", "_", "8f2b6c1e"] {
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod{pod}.slice/crio-{ID}.scope"
            );
            let expected = container(Some(Runtime::CriO), None);
            assert_eq!(Container::from_cgroup(&v2(&path)), expected, "{path}");
        }
        let unslashed = format!("/kubepods/burstable/pod{UID_SYSTEMD}/{ID}");
        let expected = container(None, None);
        assert_eq!(Container::from_cgroup(&v2(&unslashed)), expected);
    }

    /// A container id, or one nearly so: the wrong length or case.
    fn id() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9a-f]{64}", "[0-9a-fA-F]{62,66}"]
    }

    /// A pod uid as either driver writes it, or one nearly so.
    fn pod_uid() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9a-f]{8}([-_][0-9a-f]{4}){3}[-_][0-9a-f]{12}",
            "[0-9a-f]{32}",
            "[0-9a-fA-F_-]{30,38}",
        ]
    }

    /// A cgroup path segment near the ones runtimes write, valid or nearly.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            id(),
            ("(docker|libpod|libpod-conmon|crio|cri-containerd|x)", id())
                .prop_map(|(prefix, id)| format!("{prefix}-{id}.scope")),
            ("(kubelet-)?kubepods(-burstable|-besteffort)?", pod_uid())
                .prop_map(|(parents, uid)| format!("{parents}-pod{uid}.slice")),
            pod_uid().prop_map(|uid| format!("pod{uid}")),
            "(docker|kubepods|system\\.slice|container|libpod_parent)",
            "\\PC{0,12}",
        ]
    }

    /// A /proc/PID/cgroup line with a path of [`segment`]s.
    fn line() -> impl Strategy<Value = String> {
        let hierarchy = "(0:|1:name=systemd|4:pids|9:memory|3:cpu,cpuacct|[0-9]{0,2}:\\PC{0,6})";
        let path = proptest::collection::vec(segment(), 0..6);
        (hierarchy, path).prop_map(|(hierarchy, path)| format!("{hierarchy}:/{}", path.join("/")))
    }

    fn assert_well_formed(found: Option<Container>) -> Result<(), TestCaseError> {
        if let Some(found) = found {
            prop_assert_eq!(found.id.len(), 64);
            prop_assert!(found.id.bytes().all(is_lower_hex), "{}", found.id);
            if let Some(uid) = found.pod_uid {
                prop_assert!(is_pod_uid(&uid), "{}", uid);
            }
        }
        Ok(())
    }

    proptest! {
        /// Any text is a container or none, never a panic, and any id is 64 lowercase hex digits.
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            assert_well_formed(Container::from_cgroup(&text))?;
        }

        /// The same of texts made of near-valid cgroup lines, which reach every parser.
        #[test]
        fn near_valid_lines_give_only_well_formed_ids(
            lines in proptest::collection::vec(line(), 0..4)
        ) {
            assert_well_formed(Container::from_cgroup(&lines.join("\n")))?;
        }
    }
}
