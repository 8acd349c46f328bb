//! Every end-to-end test of paylake, in one test binary. Each file below used to be a binary of
//! its own that linked DataFusion again: about a minute of release build apiece.

mod common;

mod bronze;
mod cli;
mod conformance;
mod engine;
mod files_scan;
mod formats;
mod incremental;
mod point_in_time;
mod pull;
mod quality;
mod sample_formats;
mod shell;
mod silver_gold;
mod sql_shell;
