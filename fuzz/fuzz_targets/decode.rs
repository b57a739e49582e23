//! Untrusted bytes through decode and preprocessing, with small limits so
//! the fuzzer explores headers rather than allocating large images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onnx_lambda::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::decode_and_preprocess(data);
});
