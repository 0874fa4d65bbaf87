//! `specdec-operator`: reconciles SpeculativeDeployment resources. The
//! reconciler, CRD and its printing command are still to come; until then the
//! binary says so and exits non-zero rather than pretending to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("specdec-operator: the operator is not implemented yet");
    ExitCode::from(2)
}
