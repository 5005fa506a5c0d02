//! Whether a `metrics` recorder listens.

/// Whether a metrics recorder other than the facade's no-op one is
/// installed for this thread (a local recorder) or the process (the
/// global one).
///
/// The facade's no-op recorder is a unit struct; every recorder that keeps
/// or forwards numbers holds state, so "zero-sized" is the test. When no
/// recorder listens, instruments are no-ops and courier reads no clock
/// (message age, durations) for them: a clock read costs about as much as
/// the in-process broker's whole ack.
pub(crate) fn installed() -> bool {
    ::metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::DebuggingRecorder;

    #[test]
    fn the_no_op_recorder_does_not_count_as_installed() {
        assert!(!super::installed());
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || assert!(super::installed()));
    }
}
