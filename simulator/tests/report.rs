//! `sim run --report FILE.html` renders in a real browser: Chromium from Debian's packages (`.ci/run`
//! installs it; without it these tests fail, they do not skip) loads the page headless with its script
//! on. The DOM it dumps after the script ran holds the timeline's elements, and its screenshot, decoded,
//! shows the drawing's colours — leaders, faults, a violation — where a blank or broken page shows none.

use std::path::{Path, PathBuf};
use std::process::Command;

use simulator::checkers::{Checker, Finding, Involved};
use simulator::scenario::{self, RunConfig, Scenario};

const WINDOW: (u32, u32) = (1440, 1000);

/// A scratch directory of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("domicile-report-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless Chromium on the page (bounded by `timeout`, with a profile of its own so tests may run
/// side by side).
fn chromium(scratch: &Path, page: &Path, action: &[String]) -> std::process::Output {
    let profile = scratch.join(format!("profile-{}", action.len()));
    let output = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .args(action)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("`timeout` runs");
    assert!(
        output.status.success(),
        "chromium failed ({}); is it installed? `apt-get install -y chromium` (.ci/run does)\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The DOM after the page's script ran.
fn dom(scratch: &Path, page: &Path) -> String {
    let output = chromium(scratch, page, &["--dump-dom".to_string()]);
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// The screenshot's pixels, as RGB.
struct Screenshot {
    width: u32,
    height: u32,
    pixels: Vec<[u8; 3]>,
}

impl Screenshot {
    fn take(scratch: &Path, page: &Path) -> Screenshot {
        let path = scratch.join("screenshot.png");
        chromium(scratch, page, &[format!("--screenshot={}", path.display())]);
        let mut decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).expect("chromium wrote the screenshot"),
        ));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buffer = vec![0; reader.output_buffer_size().expect("a bounded image")];
        let info = reader.next_frame(&mut buffer).expect("a frame");
        let samples = info.color_type.samples();
        assert!(samples >= 3, "a colour screenshot, not {:?}", info.color_type);
        let pixels = buffer[..info.buffer_size()]
            .chunks_exact(samples)
            .map(|pixel| [pixel[0], pixel[1], pixel[2]])
            .collect();
        Screenshot {
            width: info.width,
            height: info.height,
            pixels,
        }
    }

    /// Pixels within a small distance of `colour`.
    fn count(&self, colour: [u8; 3]) -> usize {
        self.pixels.iter().filter(|pixel| near(pixel, colour)).count()
    }

    /// The most pixels of `colour` in one column: a line drawn down the page, not a marker.
    fn tallest_column(&self, colour: [u8; 3]) -> usize {
        let width = self.width as usize;
        let mut columns = vec![0; width];
        for (index, pixel) in self.pixels.iter().enumerate() {
            if near(pixel, colour) {
                columns[index % width] += 1;
            }
        }
        columns.into_iter().max().unwrap_or(0)
    }

    fn share_not_white(&self) -> f64 {
        let coloured = self
            .pixels
            .iter()
            .filter(|pixel| pixel.iter().any(|&value| value < 235))
            .count();
        coloured as f64 / self.pixels.len() as f64
    }
}

fn near(pixel: &[u8; 3], colour: [u8; 3]) -> bool {
    (0..3).all(|channel| pixel[channel].abs_diff(colour[channel]) <= 24)
}

const LEADER_OF_FIRST_GROUP: [u8; 3] = [0x1f, 0x77, 0xb4];
const LEADER_OF_SECOND_GROUP: [u8; 3] = [0xe6, 0x73, 0x0f];
const FAULT: [u8; 3] = [0xd6, 0x27, 0x28];
const VIOLATION: [u8; 3] = [0xee, 0x00, 0x00];

#[test]
fn the_report_of_a_run_renders_in_headless_chromium() {
    let scratch = Scratch::new("failover");
    let page = scratch.0.join("failover-7.html");
    let output = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", "--scenario", "failover", "--seed", "7", "--report"])
        .arg(&page)
        .output()
        .expect("the simulator runs");
    assert!(
        output.status.success(),
        "seed 7 passes: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let html = std::fs::read_to_string(&page).expect("the report was written");
    for outside in [
        "<script src",
        "<link",
        "http://",
        "https://",
        "@import",
        "url(http",
    ] {
        let fetched = html.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !fetched.contains(outside),
            "the page is self-contained, yet has `{outside}`"
        );
    }

    let dom = dom(&scratch.0, &page);
    assert!(dom.contains(r#"data-rendered="yes""#), "the page's script ran");
    for element in [
        r#"id="timeline""#,
        r#"id="axis""#,
        r#"id="faults-lane""#,
        r#"id="nodes""#,
        r#"id="groups""#,
        r#"id="summary""#,
        r#"class="fault crash""#,
        r#"class="leader""#,
        r#"class="member voter""#,
        r#"class="down""#,
        r#"class="faults-stop""#,
        r#"data-node="n1""#,
        r#"data-site="hamar""#,
    ] {
        assert!(dom.contains(element), "the rendered page has {element}");
    }
    assert!(
        !dom.contains(r#"data-faults="0""#),
        "the script counted the fault markers"
    );

    let screenshot = Screenshot::take(&scratch.0, &page);
    assert_eq!((screenshot.width, screenshot.height), WINDOW);
    assert!(
        screenshot.share_not_white() > 0.05,
        "the screenshot is not blank: {:.3} of it is not white",
        screenshot.share_not_white()
    );
    for (what, colour, least) in [
        ("the first group's leaders", LEADER_OF_FIRST_GROUP, 2_000),
        ("the second group's leaders", LEADER_OF_SECOND_GROUP, 2_000),
        ("the fault markers", FAULT, 20),
    ] {
        let seen = screenshot.count(colour);
        assert!(
            seen >= least,
            "{what} are drawn: {seen} pixels of {colour:?}, want {least}"
        );
    }
    let tallest = screenshot.tallest_column(VIOLATION);
    assert!(
        tallest < 40,
        "a passing run draws no violation line: {tallest} red pixels in a column"
    );
}

/// A violation is drawn across the timeline where it happened (planted into a real run's outcome: the
/// default build has no canary that would make one).
#[test]
fn a_violation_is_drawn_where_it_happened() {
    let config = RunConfig {
        scenario: Scenario::Failover,
        seed: 7,
        canary: None,
        keep_trace: false,
        keep_history: false,
        fault_seconds: Some(3),
    };
    let mut outcome = scenario::run(&config);
    let group = outcome.layout.groups[0].0.clone();
    outcome.findings.push(Finding {
        checker: Checker::Linearizability,
        at: Some(std::time::Duration::from_millis(2_500)),
        involved: Involved::group(&group)
            .nodes([placement::NodeId(1)])
            .keys(["0 (EEA/user-0/register)".to_string()]),
        detail: "a planted violation".to_string(),
    });
    outcome.report.violations.linearizability = 1;
    let scratch = Scratch::new("violation");
    let page = scratch.0.join("violation.html");
    std::fs::write(&page, simulator::html::render(&outcome, &config)).expect("the report is written");

    let dom = dom(&scratch.0, &page);
    assert!(dom.contains(r#"data-rendered="yes""#), "the page's script ran");
    assert!(
        dom.contains(r#"data-violations="1""#),
        "one violation marker: {}",
        dom.len()
    );
    assert!(dom.contains(r#"class="violation" id="violation-0" data-at="2.500""#));
    assert!(dom.contains(r#"class="verdict failed""#));
    assert!(
        dom.contains("a planted violation"),
        "the violations table names it"
    );

    let screenshot = Screenshot::take(&scratch.0, &page);
    let tallest = screenshot.tallest_column(VIOLATION);
    assert!(
        tallest >= 200,
        "the violation's line is drawn down the timeline: {tallest} red pixels in a column"
    );
}
