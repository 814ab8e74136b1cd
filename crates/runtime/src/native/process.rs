//! Identity and liveness of a sandbox's PID 1 as seen from the host.
//!
//! A bare PID is not an identity: after the sandbox exits the kernel may hand the number to an
//! unrelated process, and a runner restarted later must never signal that one. The PID is kept
//! together with its start time (`/proc/<pid>/stat` field 22) and the kernel boot id.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Clock ticks since boot at which the process started.
    pub start_time: u64,
    pub boot_id: String,
}

/// The fields of `/proc/<pid>/stat` we use.
struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` is in parentheses and may itself contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm, fields are numbered from 3 (state); starttime is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

impl ProcessIdentity {
    /// Records the identity of a process that exists right now.
    pub fn capture(pid: i32) -> Option<Self> {
        let stat = read_stat(pid)?;
        Some(ProcessIdentity {
            pid,
            start_time: stat.start_time,
            boot_id: boot_id().to_owned(),
        })
    }

    /// The same process (not a reused PID) still exists, whether running or a zombie.
    fn exists(&self) -> Option<Stat> {
        if self.boot_id != boot_id() {
            return None;
        }
        read_stat(self.pid).filter(|s| s.start_time == self.start_time)
    }

    /// The process is running (exited-but-unreaped counts as not alive).
    pub fn is_alive(&self) -> bool {
        self.exists().is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
    }

    /// Sends `signal` if the process is still this one.
    pub fn signal(&self, signal: Signal) {
        if self.is_alive() {
            // ESRCH races with the exit and is fine.
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }

    /// Whether the process has a handler for `signal`. The kernel drops signals without a
    /// handler that are sent to a pid namespace's init from outside, so waiting for them to act
    /// would be pointless.
    pub fn catches(&self, signal: Signal) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
    }

    /// Collects the exit status if the process is a zombie child of ours (the init clones it
    /// with CLONE_PARENT so the runtime is its parent while it runs). Not our child: nothing to do,
    /// the host's init reaps it.
    pub fn reap(&self) {
        if self.exists().is_some_and(|s| s.state == 'Z') {
            let _ = waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG));
        }
    }

    /// Polls until the process is gone or `timeout` passes; returns whether it is gone.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                self.reap();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::capture(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!other.is_alive());
        let rebooted = ProcessIdentity {
            boot_id: "x".into(),
            ..me
        };
        assert!(!rebooted.is_alive());
    }
}
