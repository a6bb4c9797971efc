//! The journal's record of one change to a process in flight: what the
//! engine tells the journal before each step, what the store keeps on disk
//! (`STATE_DIR/journal/PID-ID.json`) and what the next run's recovery
//! reads back. One type for all three, stored as JSON:
//!
//! ```json
//! {"op":"apply","pid":1234,"start_time":5678,"id":"abcd1234",
//!  "map_start":140737488347136,"map_len":16384,"step":"window"}
//! ```

use serde::{Deserialize, Serialize};

/// Which change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Apply,
    Undo,
}

/// The step about to be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// About to map the patch at the recorded address.
    Mapping,
    /// About to stop the threads and write (or restore) jumps.
    Window,
    /// The jumps are restored and the record retired; about to unmap.
    Unmapping,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Undo => "undo",
        }
    }
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Mapping => "mapping",
            Step::Window => "window",
            Step::Unmapping => "unmapping",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a change to a process was doing when it was last recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    pub op: Op,
    pub pid: i32,
    /// The process's start time (`/proc/PID/stat` field 22), so a reused
    /// pid is not mistaken for the process the record is about.
    pub start_time: u64,
    /// The patch.
    pub id: crate::PatchId,
    /// Where the patch is (to be) mapped in the process.
    pub map_start: u64,
    pub map_len: u64,
    /// The last step reached.
    pub step: Step,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_the_json_of_earlier_versions() {
        let r = InFlight {
            op: Op::Undo,
            pid: 12,
            start_time: 3,
            id: "abcd1234".parse().unwrap(),
            map_start: 4096,
            map_len: 8192,
            step: Step::Unmapping,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"op":"undo","pid":12,"start_time":3,"id":"abcd1234","map_start":4096,"map_len":8192,"step":"unmapping"}"#
        );
        assert_eq!(serde_json::from_str::<InFlight>(&json).unwrap(), r);
        let bad = json.replace("unmapping", "mapped");
        assert!(serde_json::from_str::<InFlight>(&bad).is_err());
    }
}
