//! A latency-by-percentile chart as a self-contained SVG.
//!
//! Written by hand rather than with a plotting crate: the chart is one line, a few markers and
//! axes, which is about a hundred lines of SVG text, and it adds nothing to the build.

use std::fmt::Write as _;

use super::Report;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 70.0;
/// The x axis ends at 99.999%: beyond it there are too few samples in a run to mean anything.
const MAX_NINES: f64 = 5.0;

/// Draw the report's latency distribution: x is the percentile on a "nines" scale (0%, 90%,
/// 99%, 99.9%, ...), so the tail gets as much room as the median; y is the latency in ms.
pub fn latency_svg(report: &Report) -> String {
    let histogram = &report.latency_micros;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    // Show the tail only as far as the sample count supports: 1 000 replies give up to 99.9%.
    let nines_max = if histogram.len() < 10 {
        1.0
    } else {
        (histogram.len() as f64)
            .log10()
            .floor()
            .clamp(1.0, MAX_NINES)
    };
    let quantile_at = |nines: f64| 1.0 - 10f64.powf(-nines);
    let millis_at = |nines: f64| histogram.value_at_quantile(quantile_at(nines)) as f64 / 1000.0;
    let y_max = nice_ceiling(if histogram.is_empty() {
        1.0
    } else {
        millis_at(nines_max)
    });
    let x_of = |nines: f64| LEFT + plot_width * nines / nines_max;
    let y_of = |millis: f64| TOP + plot_height * (1.0 - millis / y_max);

    let mut svg = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let transport = match report.transport {
        super::Transport::Udp => "UDP",
        super::Transport::Tcp => "TCP",
    };
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="32" font-size="20" font-weight="bold" fill="#222">DNS latency by percentile: {} over {transport}</text>"##,
        escape(&report.server.to_string())
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="56" font-size="14" fill="#555">{} answered of {} sent, {} lost, {:.0} queries/s, max {:.3} ms</text>"##,
        report.answered, report.sent, report.lost, report.qps, report.latency_ms.max
    );

    // Horizontal grid lines and y labels (the axis title carries the unit).
    let decimals = match y_max / 5.0 {
        step if step >= 1.0 => 0,
        step if step >= 0.1 => 1,
        step if step >= 0.01 => 2,
        _ => 3,
    };
    for step in 0..=5 {
        let millis = y_max * f64::from(step) / 5.0;
        let y = y_of(millis);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3e3"/>"##,
            LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="end" fill="#333">{millis:.decimals$}</text>"##,
            LEFT - 8.0,
            y + 4.0,
        );
    }
    // Vertical grid lines at each nine.
    let mut nines = 0.0;
    while nines <= nines_max + 1e-9 {
        let x = x_of(nines);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e3e3e3"/>"##,
            TOP + plot_height
        );
        let _ = writeln!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#333">{}</text>"##,
            TOP + plot_height + 20.0,
            percentile_label(nines)
        );
        nines += 1.0;
    }
    // Axes and their titles.
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{:.1} H{:.1}" fill="none" stroke="#333"/>"##,
        TOP + plot_height,
        LEFT + plot_width
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="#222">percentile of answered queries</text>"##,
        LEFT + plot_width / 2.0,
        HEIGHT - 20.0
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate(20 {:.1}) rotate(-90)" font-size="14" text-anchor="middle" fill="#222">latency (ms)</text>"##,
        TOP + plot_height / 2.0
    );

    if histogram.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="18" text-anchor="middle" fill="#b00">no replies: nothing to plot</text>"##,
            LEFT + plot_width / 2.0,
            TOP + plot_height / 2.0
        );
    } else {
        let mut points = String::new();
        let samples = 400;
        for index in 0..=samples {
            let nines = nines_max * f64::from(index) / f64::from(samples);
            let _ = write!(points, "{:.1},{:.1} ", x_of(nines), y_of(millis_at(nines)));
        }
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f6fb2" stroke-width="2.5" stroke-linejoin="round"/>"##,
            points.trim_end()
        );
        // Markers for the percentiles the text report quotes, where the run had enough samples.
        let marks = [
            ("p50", 0.5_f64, report.latency_ms.p50),
            ("p90", 0.9, report.latency_ms.p90),
            ("p99", 0.99, report.latency_ms.p99),
            ("p99.9", 0.999, report.latency_ms.p99_9),
        ];
        for (name, quantile, millis) in marks {
            let nines = -(1.0 - quantile).log10();
            if nines > nines_max + 1e-9 {
                continue;
            }
            let (x, y) = (x_of(nines), y_of(millis));
            let _ = writeln!(
                svg,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="4.5" fill="#d9480f"/>"##
            );
            // Above and to the left of the point, where a rising curve leaves room; to the right
            // when that would cross the y axis. A white halo keeps the text readable on lines.
            let label = format!("{name} {}", format_millis(millis));
            let text_width = 7.5 * label.len() as f64;
            let (label_x, anchor) = if x - 8.0 - text_width > LEFT {
                (x - 8.0, "end")
            } else {
                (x + 8.0, "start")
            };
            let _ = writeln!(
                svg,
                r##"<text x="{label_x:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="{anchor}" fill="#d9480f" stroke="#ffffff" stroke-width="4" paint-order="stroke">{label}</text>"##,
                (y - 8.0).max(TOP + 12.0)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest "round" number (1, 2 or 5 times a power of ten) at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value.is_nan() || value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for factor in [1.0, 2.0, 5.0, 10.0] {
        if factor * magnitude >= value {
            return factor * magnitude;
        }
    }
    10.0 * magnitude
}

fn percentile_label(nines: f64) -> String {
    if nines < 0.5 {
        return "0%".to_owned();
    }
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

fn format_millis(millis: f64) -> String {
    if millis >= 100.0 {
        format!("{millis:.0} ms")
    } else if millis >= 1.0 {
        format!("{millis:.2} ms")
    } else {
        format!("{millis:.3} ms")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
