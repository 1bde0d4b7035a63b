//! Arbitrary text as a recipient address, against a French site's policy: an accepted number
//! is E.164 and allowed, a refusal is a 5xx reply with a printable ASCII sentence.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mail2sms_fuzz::address(data);
});
