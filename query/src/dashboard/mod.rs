//! The dashboard at `/`: one HTML page, its script and its style sheet, compiled into the binary
//! (no CDN, no third-party files). The page holds no data: its script reads
//! `/api/v1/insights/*` with the filters kept in the page's URL, and asks for the bearer token
//! when the API answers 401. Charts are the script's own SVG.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// A page or asset with its type; no caching across builds is needed beyond revalidation.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}

/// Routes of the dashboard: `/`, `/dashboard/app.js`, `/dashboard/style.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for path in ["/dashboard/app.js", "/dashboard/style.css"] {
            assert!(INDEX.contains(path), "{path}");
        }
        // every element the script draws into exists in the page: the ids written out as the
        // first argument of `getElementById` and of the drawing helpers
        let calls = [
            "getElementById",
            "figures",
            "table",
            "lineChart",
            "heatmap",
            "fillList",
        ];
        let ids: Vec<&str> = calls
            .iter()
            .flat_map(|f| {
                SCRIPT
                    .split(format!("{f}(\"").as_str())
                    .skip(1)
                    .collect::<Vec<_>>()
            })
            .filter_map(|rest| {
                let (id, after) = rest.split_once('"')?;
                (after.starts_with(')') || after.starts_with(',')).then_some(id)
            })
            .collect();
        assert!(ids.len() >= 20, "the script's targets are found: {ids:?}");
        for id in ids {
            assert!(INDEX.contains(&format!("id=\"{id}\"")), "#{id} is missing");
        }
    }

    /// WCAG relative luminance of `#rrggbb`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if v <= 0.039_28 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
    }

    fn contrast(a: &str, b: &str) -> f64 {
        let (a, b) = (luminance(a), luminance(b));
        (a.max(b) + 0.05) / (a.min(b) + 0.05)
    }

    #[test]
    fn every_text_colour_meets_wcag_aa_contrast() {
        // the palette is the `:root` custom properties of the style sheet
        let var = |name: &str| -> &str {
            let at = STYLE.find(&format!("--{name}: #")).unwrap() + name.len() + 4;
            &STYLE[at..at + 7]
        };
        let text = ["ink", "muted", "accent", "s1", "s2", "s3", "s4", "s5", "s6"];
        for background in ["card", "bg"] {
            for fg in text {
                let ratio = contrast(var(fg), var(background));
                assert!(ratio >= 4.5, "--{fg} on --{background}: {ratio:.2}:1");
            }
        }
        // buttons: white on the accent colour
        assert!(contrast("#ffffff", var("accent")) >= 4.5);
        assert!((contrast("#000000", "#ffffff") - 21.0).abs() < 1e-9);
    }
}
