//! Lambda's HTTP events (API Gateway REST and HTTP APIs, Function URLs,
//! ALB) to and from the router: the request through `lambda_http`'s types,
//! the answer in the shape that event source expects.

use std::sync::Arc;

use serde_json::{json, Value};

use lambda_http::request::{LambdaRequest, RequestOrigin};

use super::HttpResponse;
use crate::app::App;
use crate::error::ErrorBody;

/// API Gateway (REST and HTTP APIs), Function URLs and ALB all carry a
/// `requestContext`; REST API test events may carry only `httpMethod`.
pub fn is_http_event(event: &Value) -> bool {
    event.get("requestContext").is_some() || event.get("httpMethod").is_some()
}

/// Converts an HTTP-shaped event to an `http::Request`, routes it, and
/// shapes the answer as that event source expects.
pub async fn handle_event(app: Arc<App>, event: Value) -> Value {
    let request: LambdaRequest = match serde_json::from_value(event) {
        Ok(r) => r,
        Err(e) => {
            // Every HTTP source accepts this minimal shape.
            let body = ErrorBody::new(
                "invalid_event",
                format!("the HTTP event could not be read: {e}"),
            );
            app.metrics().error(&body.code);
            let body = body.to_json();
            return json!({"statusCode": 400, "headers": {"content-type": "application/json"},
                          "body": body.to_string(), "isBase64Encoded": false});
        }
    };
    let origin = request.request_origin();
    let request = http::Request::<lambda_http::Body>::from(request);
    // Route on the resource path: REST APIs prefix the stage ("/prod/predict").
    let path = lambda_http::RequestExt::raw_http_path(&request).to_string();
    let (mut parts, body) = request.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(uri) = http::Uri::builder().path_and_query(path_and_query).build() {
        parts.uri = uri;
    }
    let bytes = match body {
        lambda_http::Body::Text(t) => bytes::Bytes::from(t),
        lambda_http::Body::Binary(b) => bytes::Bytes::from(b),
        _ => bytes::Bytes::new(),
    };
    let request = http::Request::from_parts(parts, bytes);
    let response = super::route(Some(app.clone()), request).await;
    super::observe(Some(&app), &response);
    shape_response(origin, response)
}

/// The router's answer in the response type of the event's source.
fn shape_response(origin: RequestOrigin, response: HttpResponse) -> Value {
    let (parts, body) = response.into_parts();
    let status = i64::from(parts.status.as_u16());
    let body = Some(aws_lambda_events::encodings::Body::Text(
        String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    ));
    let headers = parts.headers;
    let value = match origin {
        RequestOrigin::ApiGatewayV1 => {
            let mut r = aws_lambda_events::apigw::ApiGatewayProxyResponse::default();
            r.status_code = status;
            // REST APIs merge both header fields; send each header once.
            r.multi_value_headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
        RequestOrigin::Alb => {
            let mut r = aws_lambda_events::alb::AlbTargetGroupResponse::default();
            r.status_code = status;
            r.status_description = Some(format!(
                "{} {}",
                status,
                parts.status.canonical_reason().unwrap_or_default()
            ));
            // The target group may use either field: fill both.
            r.headers = headers.clone();
            r.multi_value_headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
        // HTTP APIs (payload 2.0) and Function URLs.
        _ => {
            let mut r = aws_lambda_events::apigw::ApiGatewayV2httpResponse::default();
            r.status_code = status;
            r.headers = headers;
            r.body = body;
            serde_json::to_value(r)
        }
    };
    value.unwrap_or_else(
        |e| json!({"statusCode": 500, "body": format!("cannot serialise the response: {e}")}),
    )
}
