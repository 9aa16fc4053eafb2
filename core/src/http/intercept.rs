//! Middleware that costs the requests it lets through next to nothing.
//!
//! axum's `middleware::from_fn` boxes every request's future and clones the inner service
//! for each request, whether the middleware acts or not: about 3,500 instructions per request
//! and layer, measured with callgrind on `POST /v1/agent/connect/authorize` (BENCHMARKS.md,
//! "Issue 18's clean-up, before and after"). Our layers act on few requests (a body declared
//! too large, a request for another datacenter), so an [`Intercept`] decides synchronously
//! and only the requests it takes pay for a boxed future.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::{BoxFuture, Either};
use tower_layer::Layer;
use tower_service::Service;

/// What an [`Intercept`] does with a request.
#[derive(Debug)]
pub enum Verdict {
    /// On to the routes, untouched.
    Pass(Request),
    /// [`Intercept::take`] answers it.
    Take(Request),
}

/// A synchronous look at each request, and an answer for the ones it takes.
pub trait Intercept: Clone + Send + Sync + 'static {
    /// Decides without waiting; runs for every request, so it should be cheap.
    fn check(&self, req: Request) -> Verdict;

    /// Answers a request [`Intercept::check`] took; `next` runs it through the routes,
    /// for an interceptor that only wraps or sometimes falls back.
    fn take(self, req: Request, next: Next) -> BoxFuture<'static, Response>;
}

/// The routes behind an interceptor, for the requests it took.
pub struct Next(Box<dyn FnOnce(Request) -> BoxFuture<'static, Response> + Send>);

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

impl Next {
    /// Runs `req` through the routes.
    pub async fn run(self, req: Request) -> Response {
        (self.0)(req).await
    }
}

/// The [`Layer`] that puts `I` in front of a router: `router.layer(InterceptLayer(i))`.
#[derive(Clone, Debug)]
pub struct InterceptLayer<I>(pub I);

impl<S, I: Clone> Layer<S> for InterceptLayer<I> {
    type Service = Intercepted<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        Intercepted {
            inner,
            intercept: self.0.clone(),
        }
    }
}

/// A service behind an [`Intercept`].
#[derive(Clone, Debug)]
pub struct Intercepted<S, I> {
    inner: S,
    intercept: I,
}

impl<S, I> Service<Request> for Intercepted<S, I>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    I: Intercept,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.intercept.check(req) {
            Verdict::Pass(req) => Either::Right(self.inner.call(req)),
            Verdict::Take(req) => {
                let inner = self.inner.clone();
                let next = Next(Box::new(move |req| {
                    Box::pin(async move {
                        let mut inner = inner;
                        let Ok(()) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await;
                        let Ok(resp) = inner.call(req).await;
                        resp
                    })
                }));
                let fut = self.intercept.clone().take(req, next);
                Either::Left(Box::pin(async move { Ok(fut.await) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    /// Takes `/taken` (answers itself) and `/wrapped` (runs the routes and marks the answer);
    /// everything else passes.
    #[derive(Clone)]
    struct Sample;

    impl Intercept for Sample {
        fn check(&self, req: Request) -> Verdict {
            match req.uri().path() {
                "/taken" | "/wrapped" => Verdict::Take(req),
                _ => Verdict::Pass(req),
            }
        }

        fn take(self, req: Request, next: Next) -> BoxFuture<'static, Response> {
            Box::pin(async move {
                if req.uri().path() == "/taken" {
                    return Response::new(Body::from("taken"));
                }
                let mut resp = next.run(req).await;
                resp.headers_mut()
                    .insert("x-wrapped", "yes".parse().expect("header value"));
                resp
            })
        }
    }

    async fn call(router: &mut Router, path: &str) -> (String, bool) {
        let req = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let Ok(resp) = router.call(req).await;
        let wrapped = resp.headers().contains_key("x-wrapped");
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .expect("body");
        (String::from_utf8_lossy(&body).into_owned(), wrapped)
    }

    #[tokio::test]
    async fn passes_takes_and_wraps() {
        let mut router = Router::new()
            .route("/plain", get(|| async { "plain" }))
            .route("/wrapped", get(|| async { "inner" }))
            .route("/taken", get(|| async { "never" }))
            .layer(InterceptLayer(Sample));
        assert_eq!(call(&mut router, "/plain").await, ("plain".into(), false));
        assert_eq!(call(&mut router, "/taken").await, ("taken".into(), false));
        assert_eq!(call(&mut router, "/wrapped").await, ("inner".into(), true));
    }
}
