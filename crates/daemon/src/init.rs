//! PID-1 duties and privilege dropping, done before any thread exists.
//!
//! As PID 1 of a sandbox the process must reap every orphan and must not die from signals it
//! ignores by default. It forks: the parent stays PID 1 as a tiny supervisor (reap, forward
//! SIGTERM/SIGINT, exit with the server's status), the child becomes the HTTP server running as
//! the sandbox user.

use std::{
    env,
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, Ordering},
};

use nix::{
    errno::Errno,
    sys::{
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, fork, geteuid, setgid, setgroups, setuid},
};

use crate::users::{Account, UserDb};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("fork failed: {0}")]
    Fork(Errno),
    #[error("cannot install signal handler for {signal}: {errno}")]
    Signal { signal: Signal, errno: Errno },
    #[error("sandbox user {0:?} not found in /etc/passwd")]
    UnknownUser(String),
    #[error("cannot switch to user {user}: {step} failed: {errno}")]
    DropPrivileges {
        user: String,
        step: &'static str,
        errno: Errno,
    },
}

/// Pid of the server child, read by the async-signal-safe forwarding handler.
static SERVER_PID: AtomicI32 = AtomicI32::new(0);

/// Signals the supervisor passes on to the server instead of acting on them.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Forks; returns in the child (the future server). The parent never returns: it supervises
/// the child and exits with its status.
///
/// Must be called while the process is single-threaded.
pub fn fork_supervisor() -> Result<(), InitError> {
    if std::process::id() != 1 {
        // Outside a pid namespace (`--init` by hand) orphans would skip us; claim them.
        // SAFETY: plain prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    // SAFETY: called before any thread is started (see the caller), so the child may run
    // arbitrary code after fork.
    match unsafe { fork() }.map_err(InitError::Fork)? {
        ForkResult::Child => Ok(()),
        ForkResult::Parent { child } => supervise(child),
    }
}

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = SERVER_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

fn supervise(server: Pid) -> ! {
    SERVER_PID.store(server.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in FORWARDED {
        // SAFETY: the handler only calls kill(2) and reads an atomic.
        if let Err(errno) = unsafe { sigaction(signal, &action) } {
            eprintln!(
                "daytona-daemon init: {}",
                InitError::Signal { signal, errno }
            );
        }
    }
    loop {
        match waitpid(None, None) {
            Ok(status) if status.pid() == Some(server) => std::process::exit(exit_code(status)),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => {
                // ECHILD cannot happen while the server lives; anything else is fatal.
                eprintln!("daytona-daemon init: waitpid failed: {errno}");
                std::process::exit(1);
            }
        }
    }
}

fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}

/// The account commands run as: `DAYTONA_SANDBOX_USER`, else `daytona` if it exists, else root.
pub fn sandbox_account(users: &UserDb) -> Result<Account, InitError> {
    match env::var("DAYTONA_SANDBOX_USER")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(name) => users
            .user_by_name(&name)
            .cloned()
            .or_else(|| (name == "root").then(root_account))
            .ok_or(InitError::UnknownUser(name)),
        None => Ok(users
            .user_by_name("daytona")
            .or_else(|| users.user_by_uid(0))
            .cloned()
            .unwrap_or_else(root_account)),
    }
}

/// Root as assumed when an image ships no `/etc/passwd`.
fn root_account() -> Account {
    Account {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home: PathBuf::from("/root"),
        shell: "/bin/sh".into(),
    }
}

/// Becomes `account` (supplementary groups, gid, uid) and sets HOME, USER, LOGNAME, SHELL.
///
/// Must be called while the process is single-threaded (it edits the environment).
pub fn become_user(users: &UserDb, account: &Account) -> Result<(), InitError> {
    let fail = |step, errno| InitError::DropPrivileges {
        user: account.name.clone(),
        step,
        errno,
    };
    if geteuid().is_root() && account.uid != 0 {
        let groups: Vec<Gid> = users
            .group_ids_of(account)
            .into_iter()
            .map(Gid::from_raw)
            .collect();
        setgroups(&groups).map_err(|e| fail("setgroups", e))?;
        setgid(Gid::from_raw(account.gid)).map_err(|e| fail("setgid", e))?;
        setuid(Uid::from_raw(account.uid)).map_err(|e| fail("setuid", e))?;
    }
    let shell = if account.shell.is_empty() || !Path::new(&account.shell).exists() {
        "/bin/sh"
    } else {
        account.shell.as_str()
    };
    // SAFETY: single-threaded at this point (documented precondition).
    unsafe {
        env::set_var("HOME", &account.home);
        env::set_var("USER", &account.name);
        env::set_var("LOGNAME", &account.name);
        env::set_var("SHELL", shell);
    }
    Ok(())
}
