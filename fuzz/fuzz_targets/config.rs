//! The configuration loader on any text: a configuration, or an error
//! that names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = gatehouse::fuzzing::config(text) {
        assert!(e.to_string().contains("fuzz.toml"));
    }
});
