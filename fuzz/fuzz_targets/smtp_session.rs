//! Arbitrary client input, cut into arbitrary reads, through the sans-IO SMTP session with the
//! I/O layer played in-process: replies stay well-formed, and no mail is delivered that the
//! session should have refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mail2sms_fuzz::smtp_session(data);
});
