//! Whole HTTP requests through the router with the bundled model: the
//! first byte picks a route and content type (including the KServe V2
//! infer route and its binary extension, and `s3_uri` references whose
//! keys are the fuzz input), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onnx_lambda::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::route_request(data);
});
