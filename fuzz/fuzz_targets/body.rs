//! Arbitrary bytes as a mail: body extraction and the header recipient reader must return
//! (never panic), and the SMS text must be clean.
//!
//! `extract` contains panics of the MIME parser on purpose (it refuses that one mail). The
//! panic hook libfuzzer-sys installs aborts before any unwinding, which would report those as
//! crashes; this target replaces it with one that prints each new panic location once and lets
//! the panic unwind. A panic that escapes `extract` still reaches libfuzzer-sys's
//! `catch_unwind`, which aborts: that is the crash to find.
#![no_main]

use std::collections::HashSet;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map_or_else(|| "unknown location".to_string(), ToString::to_string);
            let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.get_or_insert_with(HashSet::new).insert(at) {
                eprintln!("panic (contained unless the run aborts next): {info}");
            }
        }));
    },
    |data: &[u8]| {
        mail2sms_fuzz::body(data);
    }
);
