//! hotsplice on one machine, as a library: the state of the machine
//! (processes and what is applied in them, the store, the kernel), plans
//! and their execution (apply, remove, upgrade), recovery of what a killed
//! run left, the daemon loop, the kernel feed and boot policy.
//!
//! Everything returns plain, serializable data and never prints: the
//! `hotsplice` command renders it for people and as `--json`; a fleet
//! server calls the same API. What happens along the way (warnings,
//! progress, the daemon's doings) goes to the caller as [`Event`]s.
//!
//! ```no_run
//! use hotsplice_agent::{Agent, AgentOptions};
//! let agent = Agent::new(AgentOptions::default()).unwrap();
//! let inst = agent.installed_patches(false).unwrap();
//! let pids = hotsplice_agent::pids(None);
//! for o in agent.plan_upgrade(&pids, &inst) {
//!     println!("{o:?}");
//! }
//! ```

mod check;
mod daemon;
mod error;
mod event;
pub mod fleet;
mod info;
mod kernel;
mod machine;
mod netlink;
pub mod pool;
mod upgrade;
mod user;
mod vulns;

pub use check::{CheckReport, CheckStatus, KernelCheck, MissingPatch, UserCheck};
pub use daemon::DaemonOptions;
pub use error::{chain, links, About, AgentError, Result};
pub use event::{Event, Sink};
pub use info::PatchInfo;
pub use kernel::{wrap_module, BootReport, FeedPatch, Uname};
pub use machine::{comm, exe, exited, printable, Agent, AgentOptions};
pub use upgrade::{Installed, Outcome, UpgradeRun};
pub use user::{
    pids, AppliedView, ApplyPlan, AvailablePatch, CorruptView, InterruptedView, OpResult,
    ProcessPatches, RemovalPlan, Run, StillInOld, TargetObject,
};
pub use vulns::{KernelFix, LiveFixes, ProcessRef, UserFix};
