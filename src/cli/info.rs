//! `zaya info` (not implemented yet).
use zaya_mlx::{Result, ZayaError};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<i32> {
    Err(ZayaError::InvalidArgument("`zaya info` is not implemented yet".into()))
}
