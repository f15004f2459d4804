//! `.env` parsing on any text: every line number given is in the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let lines = text.lines().count();
    for (_, _, line) in gatehouse::fuzzing::dotenv(text) {
        assert!(line >= 1 && line <= lines);
    }
});
