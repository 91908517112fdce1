//! A real unprivileged user for a test, created and removed by it.

use std::{path::Path, process::Command};

/// A system user (and the heapwatch group, if missing) for the test, removed after.
pub struct TestUser {
    name: &'static str,
    created_group: bool,
}

impl TestUser {
    pub fn create() -> Self {
        let name = "hwtest";
        let _ = Command::new("userdel").arg(name).output();
        let created_group = Command::new("getent")
            .args(["group", "heapwatch"])
            .output()
            .is_ok_and(|o| !o.status.success());
        if created_group {
            run(Command::new("groupadd").args(["--system", "heapwatch"]));
        }
        run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            "heapwatch",
            name,
        ]));
        Self {
            name,
            created_group,
        }
    }

    /// `program args` run as this user (with the user's groups).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={}", self.name),
            &format!("--regid={}", self.name),
            "--init-groups",
        ])
        .arg(program);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(self.name).output();
        if self.created_group {
            let _ = Command::new("groupdel").arg("heapwatch").output();
        }
    }
}

fn run(cmd: &mut Command) {
    let output = cmd.output().expect("run a user-management command");
    assert!(
        output.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
