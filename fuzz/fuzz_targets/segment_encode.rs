//! Arbitrary text through segmentation, the SMS-SUBMIT encoder and back through the decoder:
//! the text must come back whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mail2sms_fuzz::segment_encode(data));
