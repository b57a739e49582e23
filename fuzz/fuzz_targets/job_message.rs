//! SQS message bodies through the job parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onnx_lambda::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        fuzzing::parse_job(body);
    }
});
