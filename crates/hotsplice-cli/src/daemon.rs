//! `hotsplice daemon` (see below).

use crate::context::Ctx;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct DaemonArgs {}

pub fn run(_ctx: &Ctx, _a: DaemonArgs) -> Result<bool> {
    anyhow::bail!("not yet")
}
