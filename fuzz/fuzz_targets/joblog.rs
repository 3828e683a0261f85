//! The job-log reader: never panics, memory follows the number of lines (not
//! the indices in them), and a parsed line prints as a line that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runspace::joblog::{read, Line};

fuzz_target!(|data: &[u8]| {
    let log = read(data, "fuzz.log").expect("reading from memory cannot fail");
    assert!(log.good_len <= data.len() as u64);
    assert!(log.recorded.failed <= log.recorded.finished);
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(log.recorded.finished <= lines);
    for text in String::from_utf8_lossy(data).lines() {
        if let Some(line) = Line::parse(text) {
            let shown = line.to_string();
            let again = Line::parse(&shown).unwrap_or_else(|| panic!("{text:?} printed as unparsable {shown:?}"));
            assert_eq!(again.to_string(), shown);
            assert_eq!(
                (again.seq, again.index, again.status, again.attempts, again.digest),
                (line.seq, line.index, line.status, line.attempts, line.digest)
            );
        }
    }
});
