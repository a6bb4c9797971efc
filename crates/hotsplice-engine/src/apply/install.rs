//! Writing what the plan says into the mapping, with the target running:
//! the relocated code, the data, then the record. Nothing jumps there yet.

use super::plan::Plan;
use crate::journal::fault;
use crate::Result;
use hotsplice_process::{MemWriter, Pid};

/// Write the plan's code, data and record into the process; returns the
/// writer the window goes on with.
pub(crate) fn install(pid: Pid, plan: &Plan) -> Result<MemWriter> {
    let mem = MemWriter::open(pid)?;
    for (addr, bytes) in plan.image_writes() {
        mem.write(addr, bytes)?;
    }
    if let Some((at, thunk)) = plan.thunk {
        mem.write(at, thunk)?;
    }
    mem.write(plan.record_at, &plan.record)?;
    fault("apply:written");
    Ok(mem)
}
