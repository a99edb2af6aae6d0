//! `sim run --report FILE.html`: the run drawn as a timeline on one self-contained page — inline SVG,
//! a little inline CSS and script, nothing fetched — so it can be attached to an issue and opened
//! anywhere.
//!
//! Simulated time runs left to right. Above the nodes: the faults injected and the partitions. Then
//! one row per node, grouped by site: when it was down (or lost), when a partition cut it off, and for
//! each group whether it was a voter or a learner and when it led. Below: each group's leaders in
//! turn with their terms and its membership changes, `migrate`'s progress (bytes copied, steps,
//! cutover, purges), and a red line wherever a checker found a violation. Under the drawing, the same
//! run in words ([`crate::summary`]) and tables of faults and violations.
//!
//! Elements carry stable ids and classes for tests and for whoever styles them: `#timeline`, `#axis`,
//! `#faults-lane`, `#nodes`, `#groups`, `#migration`, `#summary`; `.fault`, `.partition`, `.down`,
//! `.voter`, `.learner`, `.leader`, `.no-leader`, `.membership-change`, `.migration-progress`,
//! `.cutover`, `.step`, `.violation`, `.faults-stop`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use placement::{GroupId, Membership, NodeId, Step};

use crate::checkers::Finding;
use crate::scenario::{Outcome, RunConfig};
use crate::summary::{self, seconds};
use crate::timeline::{Copy, Downtime, EventKind, Fault, Leadership, Partition, Span, Timeline};

const WIDTH: f64 = 1400.0;
const LABELS: f64 = 190.0;
const RIGHT: f64 = 30.0;
const AXIS: f64 = 34.0;
const LANE: f64 = 26.0;
const SITE_HEADER: f64 = 18.0;
const GROUP_LINE: f64 = 8.0;
const MIGRATION_LANE: f64 = 70.0;

/// One colour per group, in the layout's order.
const GROUP_COLOURS: [&str; 6] = ["#1f77b4", "#e6730f", "#2ca02c", "#9467bd", "#8c564b", "#d6619f"];

/// The whole page.
pub fn render(outcome: &Outcome, config: &RunConfig) -> String {
    let drawing = Drawing::new(outcome);
    let svg = drawing.svg();
    let report = &outcome.report;
    let verdict = if report.violations.total() == 0 {
        "passed"
    } else {
        "FAILED"
    };
    let title = format!("{} seed {}: {verdict}", report.scenario.name(), report.seed);
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Domicile simulator — {title}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>Domicile simulator — {title}</h1>
<p class="verdict {verdict_class}" id="verdict">{verdict}</p>
<p>Replay: <code id="replay">{replay}</code> · trace {hash} · {sim:.1} simulated s</p>
</header>
<section id="drawing">
{svg}
<div id="cursor-label" hidden></div>
</section>
{legend}
<section>
<h2>The run in words</h2>
<pre id="summary">{summary_text}</pre>
</section>
{violations}
{faults}
<script>{SCRIPT}</script>
</body>
</html>
"#,
        title = escape(&title),
        verdict_class = verdict.to_lowercase(),
        replay = escape(&config.replay_command()),
        hash = escape(&report.trace_hash),
        sim = report.sim_seconds,
        legend = LEGEND,
        summary_text = escape(&summary::render(outcome, config)),
        violations = violations_table(&outcome.findings),
        faults = faults_table(&outcome.timeline),
    );
    page
}

/// The page's geometry and what it draws from.
struct Drawing<'a> {
    outcome: &'a Outcome,
    /// Simulated seconds the x axis spans.
    span_seconds: f64,
    groups: Vec<GroupId>,
}

impl<'a> Drawing<'a> {
    fn new(outcome: &'a Outcome) -> Drawing<'a> {
        let end = outcome
            .timeline
            .end()
            .as_secs_f64()
            .max(outcome.report.sim_seconds)
            .max(1.0);
        let groups = outcome
            .layout
            .groups
            .iter()
            .map(|(group, _)| group.clone())
            .collect();
        Drawing {
            outcome,
            span_seconds: end,
            groups,
        }
    }

    fn timeline(&self) -> &Timeline {
        &self.outcome.timeline
    }

    fn x(&self, at: Duration) -> f64 {
        LABELS + at.as_secs_f64() / self.span_seconds * (WIDTH - LABELS - RIGHT)
    }

    fn colour(&self, group: &GroupId) -> &'static str {
        let index = self
            .groups
            .iter()
            .position(|candidate| candidate == group)
            .unwrap_or(0);
        GROUP_COLOURS[index % GROUP_COLOURS.len()]
    }

    fn node_row_height(&self) -> f64 {
        10.0 + GROUP_LINE * self.groups.len() as f64
    }

    fn svg(&self) -> String {
        let mut body = String::new();
        let mut y = AXIS;
        y = self.faults_lane(&mut body, y);
        y = self.partitions_lane(&mut body, y);
        y = self.nodes(&mut body, y);
        y = self.group_lanes(&mut body, y);
        if self.outcome.report.bytes_moved.is_some() {
            y = self.migration_lane(&mut body, y);
        }
        let height = y + 10.0;
        let (right, span) = (WIDTH - RIGHT, self.span_seconds);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="the run as a timeline" data-left="{LABELS}" data-right="{right}" data-span="{span:.3}">
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#7b5ea7" opacity="0.45"/></pattern>
<pattern id="hatch-grey" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="2" height="6" fill="#999"/></pattern></defs>
"##
        );
        self.axis(&mut svg, height);
        svg.push_str(&body);
        self.vertical_markers(&mut svg, height);
        svg.push_str("</svg>");
        svg
    }

    /// Time ticks across the top, with faint lines down the whole drawing.
    fn axis(&self, svg: &mut String, height: f64) {
        let step = tick_step(self.span_seconds);
        let _ = write!(svg, r#"<g id="axis">"#);
        let mut tick = 0.0;
        while tick <= self.span_seconds + 1e-9 {
            let x = self.x(Duration::from_secs_f64(tick));
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{height:.1}"/><text class="tick" x="{x:.1}" y="{label}" text-anchor="middle">{tick} s</text>"#,
                top = AXIS - 8.0,
                label = AXIS - 14.0,
            );
            tick += step;
        }
        let _ = write!(
            svg,
            r#"<text class="axis-title" x="8" y="{}">simulated time</text></g>"#,
            AXIS - 14.0
        );
    }

    fn lane_label(&self, body: &mut String, y: f64, height: f64, label: &str, class: &str) {
        let _ = write!(
            body,
            r#"<rect class="lane {class}" x="0" y="{y:.1}" width="{WIDTH}" height="{height:.1}"/><text class="lane-label" x="8" y="{:.1}">{}</text>"#,
            y + height / 2.0 + 4.0,
            escape(label)
        );
    }

    /// One marker per fault, coloured by kind.
    fn faults_lane(&self, body: &mut String, y: f64) -> f64 {
        let _ = write!(body, r#"<g id="faults-lane">"#);
        self.lane_label(body, y, LANE, "faults", "faults");
        let middle = y + LANE / 2.0;
        let faults: Vec<(Duration, &Fault)> = self.timeline().faults().collect();
        for (index, &(at, fault)) in faults.iter().enumerate() {
            let x = self.x(at);
            // A short label where the next marker leaves room for it.
            let room = faults
                .get(index + 1)
                .map_or(WIDTH - RIGHT, |(next, _)| self.x(*next))
                - x;
            let label = short_label(fault);
            if room > 7.0 * label.len() as f64 + 14.0 {
                let _ = write!(
                    body,
                    r#"<text class="fault-label" x="{:.1}" y="{:.1}">{}</text>"#,
                    x + 7.0,
                    middle + 4.0,
                    escape(&label)
                );
            }
            let _ = write!(
                body,
                r##"<g class="fault {kind}" id="fault-{index}" data-at="{at:.3}"><path d="M{x:.1} {top:.1} l5 9 l-5 9 l-5 -9 z"/><title>{time}  {text}</title></g>"##,
                kind = fault.kind(),
                at = at.as_secs_f64(),
                top = middle - 9.0,
                time = seconds(at),
                text = escape(&fault.to_string()),
            );
        }
        let _ = write!(body, "</g>");
        y + LANE
    }

    /// The partitions in force, as bars with their shape written in.
    fn partitions_lane(&self, body: &mut String, y: f64) -> f64 {
        let partitions = self.timeline().partitions();
        if partitions.is_empty() {
            return y;
        }
        let _ = write!(body, r#"<g id="partitions-lane">"#);
        self.lane_label(body, y, LANE, "partitions", "partitions");
        for Partition {
            from,
            to,
            description,
            ..
        } in &partitions
        {
            let (x1, x2) = (self.x(*from), self.x(*to));
            let _ = write!(
                body,
                r#"<g class="partition" data-at="{at:.3}"><rect x="{x1:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" rx="3"/><title>{time}–{end}  partition: {text}</title></g>"#,
                at = from.as_secs_f64(),
                top = y + 4.0,
                width = (x2 - x1).max(2.0),
                height = LANE - 8.0,
                time = seconds(*from),
                end = seconds(*to),
                text = escape(description),
            );
        }
        let _ = write!(body, "</g>");
        y + LANE
    }

    /// A row per node, by site: downtime, partition cuts, membership and leadership per group.
    fn nodes(&self, body: &mut String, mut y: f64) -> f64 {
        let downtime = self.timeline().downtime();
        let partitions = self.timeline().partitions();
        let memberships = self.timeline().membership_spans();
        let leaders = self.timeline().leader_spans();
        let row = self.node_row_height();
        let _ = write!(body, r#"<g id="nodes">"#);
        for (site, country, nodes) in &self.outcome.layout.sites {
            let _ = write!(
                body,
                r#"<g class="site" data-site="{site}"><rect class="site-header" x="0" y="{y:.1}" width="{WIDTH}" height="{SITE_HEADER}"/><text class="site-label" x="8" y="{:.1}">{site} ({country})</text>"#,
                y + 13.0,
                site = escape(site),
                country = escape(country),
            );
            y += SITE_HEADER;
            for (index, &node) in nodes.iter().enumerate() {
                let _ = write!(
                    body,
                    r#"<g class="node" id="node-{id}" data-node="{node}"><rect class="node-row{odd}" x="0" y="{y:.1}" width="{WIDTH}" height="{row:.1}"/><text class="node-label" x="24" y="{:.1}">{node}</text>"#,
                    y + row / 2.0 + 4.0,
                    id = node.0,
                    odd = if index % 2 == 1 { " odd" } else { "" },
                );
                self.cuts(body, node, y, row, &partitions);
                for (group_index, group) in self.groups.iter().enumerate() {
                    let line_y = y + 6.0 + GROUP_LINE * group_index as f64 + GROUP_LINE / 2.0;
                    if let Some(spans) = memberships.get(group) {
                        self.membership_line(body, node, group, line_y, spans);
                    }
                    if let Some(spans) = leaders.get(group) {
                        self.leadership(body, node, group, line_y, spans);
                    }
                }
                for &Downtime { from, to, lost } in downtime.get(&node).into_iter().flatten() {
                    let (x1, x2) = (self.x(from), self.x(to));
                    let _ = write!(
                        body,
                        r#"<g class="down{lost_class}" data-at="{at:.3}"><rect x="{x1:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}"/><title>{node} {what} {start}{until}</title></g>"#,
                        lost_class = if lost { " lost" } else { "" },
                        at = from.as_secs_f64(),
                        top = y + 1.0,
                        width = (x2 - x1).max(2.0),
                        height = row - 2.0,
                        what = if lost { "lost for good from" } else { "down from" },
                        start = seconds(from),
                        until = if lost {
                            String::new()
                        } else {
                            format!(" to {}", seconds(to))
                        },
                    );
                }
                for (at, fault) in self
                    .timeline()
                    .faults()
                    .filter(|(_, fault)| fault.node() == Some(node))
                {
                    let x = self.x(at);
                    let _ = write!(
                        body,
                        r#"<g class="fault node-fault {kind}" data-at="{seconds_at:.3}"><path d="M{a:.1} {b:.1} l6 6 m0 -6 l-6 6"/><title>{time}  {text}</title></g>"#,
                        kind = fault.kind(),
                        seconds_at = at.as_secs_f64(),
                        a = x - 3.0,
                        b = y + 2.0,
                        time = seconds(at),
                        text = escape(&fault.to_string()),
                    );
                }
                let _ = write!(body, "</g>");
                y += row;
            }
            let _ = write!(body, "</g>");
        }
        let _ = write!(body, "</g>");
        y
    }

    /// Where a partition cut `node` off from some of its peers (darker the more it lost).
    fn cuts(&self, body: &mut String, node: NodeId, y: f64, row: f64, partitions: &[Partition]) {
        let peers: usize = self
            .outcome
            .layout
            .sites
            .iter()
            .map(|(_, _, nodes)| nodes.len())
            .sum();
        for partition in partitions {
            let cut: BTreeSet<NodeId> = partition
                .blocked
                .iter()
                .filter_map(|&(a, b)| {
                    if a == node {
                        Some(b)
                    } else if b == node {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            if cut.is_empty() {
                continue;
            }
            let share = cut.len() as f64 / (peers.saturating_sub(1)).max(1) as f64;
            let (x1, x2) = (self.x(partition.from), self.x(partition.to));
            let _ = write!(
                body,
                r#"<g class="partition cut" data-at="{at:.3}"><rect x="{x1:.1}" y="{y:.1}" width="{width:.1}" height="{row:.1}" opacity="{opacity:.2}"/><title>{node} cut off from {peers_cut} ({description})</title></g>"#,
                at = partition.from.as_secs_f64(),
                width = (x2 - x1).max(2.0),
                opacity = 0.35 + 0.65 * share,
                peers_cut = cut.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", "),
                description = escape(&partition.description),
            );
        }
    }

    fn membership_line(
        &self,
        body: &mut String,
        node: NodeId,
        group: &GroupId,
        y: f64,
        spans: &[Span<Membership>],
    ) {
        let colour = self.colour(group);
        for span in spans {
            let role = if span.value.voters.contains(&node) {
                "voter"
            } else if span.value.learners.contains(&node) {
                "learner"
            } else {
                continue;
            };
            let (x1, x2) = (self.x(span.from), self.x(span.to));
            let _ = write!(
                body,
                r#"<g class="member {role}" data-group="{group}"><line x1="{x1:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{colour}"/><title>{node}: {role} of {group} from {from} to {to}</title></g>"#,
                group = escape(&group.0),
                from = seconds(span.from),
                to = seconds(span.to),
            );
        }
    }

    fn leadership(
        &self,
        body: &mut String,
        node: NodeId,
        group: &GroupId,
        y: f64,
        spans: &[Span<Leadership>],
    ) {
        let colour = self.colour(group);
        for span in spans {
            let Some((leader, term)) = span.value else {
                continue;
            };
            if leader != node {
                continue;
            }
            let (x1, x2) = (self.x(span.from), self.x(span.to));
            let _ = write!(
                body,
                r#"<g class="leader" data-group="{group}" data-node="{node}" data-term="{term}"><rect x="{x1:.1}" y="{top:.1}" width="{width:.1}" height="6" fill="{colour}"/><title>{node} leads {group} in term {term} from {from} to {to}</title></g>"#,
                group = escape(&group.0),
                top = y - 3.0,
                width = (x2 - x1).max(1.5),
                from = seconds(span.from),
                to = seconds(span.to),
            );
        }
    }

    /// Per group: its leaders in turn (with terms), leaderless stretches, membership changes.
    fn group_lanes(&self, body: &mut String, mut y: f64) -> f64 {
        let leaders = self.timeline().leader_spans();
        let _ = write!(body, r#"<g id="groups">"#);
        for (group, jurisdiction) in &self.outcome.layout.groups {
            let colour = self.colour(group);
            let _ = write!(body, r#"<g class="group" data-group="{}">"#, escape(&group.0));
            self.lane_label(body, y, LANE, &format!("{group} ({jurisdiction})"), "group-lane");
            let _ = write!(
                body,
                r#"<rect class="group-swatch" x="{:.1}" y="{:.1}" width="8" height="8" fill="{colour}"/>"#,
                LABELS - 14.0,
                y + LANE / 2.0 - 4.0
            );
            for span in leaders.get(group).into_iter().flatten() {
                let (x1, x2) = (self.x(span.from), self.x(span.to));
                let width = (x2 - x1).max(1.5);
                match span.value {
                    Some((leader, term)) => {
                        let _ = write!(
                            body,
                            r#"<g class="leader leader-span" data-node="{leader}" data-term="{term}"><rect x="{x1:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="{colour}" rx="2"/>"#,
                            top = y + 4.0,
                            height = LANE - 8.0,
                        );
                        if width > 44.0 {
                            let _ = write!(
                                body,
                                r#"<text class="span-label" x="{:.1}" y="{:.1}">{leader} t{term}</text>"#,
                                x1 + 4.0,
                                y + LANE / 2.0 + 4.0
                            );
                        }
                        let _ = write!(
                            body,
                            "<title>{leader} leads {} in term {term} from {} to {}</title></g>",
                            escape(&group.0),
                            seconds(span.from),
                            seconds(span.to)
                        );
                    }
                    None => {
                        let _ = write!(
                            body,
                            r#"<g class="no-leader"><rect x="{x1:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="url(#hatch-grey)"/><title>{} has no leader from {} to {}</title></g>"#,
                            escape(&group.0),
                            seconds(span.from),
                            seconds(span.to),
                            top = y + 4.0,
                            height = LANE - 8.0,
                        );
                    }
                }
            }
            for event in self.timeline().events() {
                let EventKind::Membership {
                    group: changed,
                    membership,
                } = &event.kind
                else {
                    continue;
                };
                if changed != group {
                    continue;
                }
                let x = self.x(event.at);
                let _ = write!(
                    body,
                    r#"<g class="membership-change" data-at="{at:.3}"><line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}"/><title>{time}  {group}: {membership:?}</title></g>"#,
                    at = event.at.as_secs_f64(),
                    top = y + 1.0,
                    bottom = y + LANE - 1.0,
                    time = seconds(event.at),
                    group = escape(&group.0),
                );
            }
            let _ = write!(body, "</g>");
            y += LANE;
        }
        let _ = write!(body, "</g>");
        y
    }

    /// `migrate`: bytes copied so far (a line rising to the total), and the steps, cutovers and purges.
    fn migration_lane(&self, body: &mut String, y: f64) -> f64 {
        let total = self.outcome.report.bytes_moved.unwrap_or(0).max(1);
        let _ = write!(body, r#"<g id="migration">"#);
        self.lane_label(
            body,
            y,
            MIGRATION_LANE,
            "migration (bytes copied)",
            "migration-lane",
        );
        let bottom = y + MIGRATION_LANE - 6.0;
        let height = MIGRATION_LANE - 20.0;
        let mut copied = 0u64;
        let mut points = vec![format!("{:.1},{bottom:.1}", self.x(Duration::ZERO))];
        let mut marks = String::new();
        for event in self.timeline().events() {
            let x = self.x(event.at);
            match &event.kind {
                EventKind::Copy(Copy::Range { bytes, .. }) => {
                    let before = bottom - height * copied as f64 / total as f64;
                    copied += bytes;
                    let after = bottom - height * copied as f64 / total as f64;
                    points.push(format!("{x:.1},{before:.1}"));
                    points.push(format!("{x:.1},{after:.1}"));
                }
                EventKind::Step(
                    step @ (Step::PromoteVoter { .. }
                    | Step::RemoveMember { .. }
                    | Step::PurgeReplica { .. }
                    | Step::AddLearner { .. }),
                ) => {
                    let kind = match step {
                        Step::AddLearner { .. } => "add-learner",
                        Step::PromoteVoter { .. } => "promote",
                        Step::RemoveMember { .. } => "remove",
                        _ => "purge",
                    };
                    let _ = write!(
                        marks,
                        r#"<g class="step {kind}" data-at="{at:.3}"><circle cx="{x:.1}" cy="{cy:.1}" r="3.5" fill="{colour}"/><title>{time}  {text}</title></g>"#,
                        at = event.at.as_secs_f64(),
                        cy = y + 9.0,
                        colour = self.colour(step.group()),
                        time = seconds(event.at),
                        text = escape(&summary::describe_step(step)),
                    );
                }
                EventKind::Cutover { group } => {
                    let _ = write!(
                        marks,
                        r#"<g class="cutover" data-at="{at:.3}"><line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{colour}"/><title>{time}  {group}: cutover, every member inside its jurisdiction</title></g>"#,
                        at = event.at.as_secs_f64(),
                        top = y + 2.0,
                        colour = self.colour(group),
                        time = seconds(event.at),
                        group = escape(&group.0),
                    );
                }
                _ => {}
            }
        }
        let end = self.x(self.timeline().end());
        points.push(format!(
            "{end:.1},{:.1}",
            bottom - height * copied as f64 / total as f64
        ));
        let _ = write!(
            body,
            r#"<polyline class="migration-progress" points="{}"><title>{} copied to new replicas</title></polyline>{marks}</g>"#,
            points.join(" "),
            summary::bytes(copied)
        );
        y + MIGRATION_LANE
    }

    /// Lines across the whole drawing: where the faults stopped, and every violation with a time.
    fn vertical_markers(&self, svg: &mut String, height: f64) {
        if let Some(at) = self.timeline().faults_stopped() {
            let x = self.x(at);
            // The label goes on the side with room for it.
            let (tx, anchor) = if x > WIDTH - RIGHT - 80.0 {
                (x - 3.0, "end")
            } else {
                (x + 3.0, "start")
            };
            let _ = write!(
                svg,
                r#"<g class="faults-stop" data-at="{:.3}"><line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{height:.1}"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="{anchor}">faults stop</text></g>"#,
                at.as_secs_f64(),
                top = AXIS - 6.0,
                ty = AXIS - 1.0,
            );
        }
        for (index, finding) in self.outcome.findings.iter().enumerate() {
            let Some(at) = finding.at else { continue };
            let x = self.x(at);
            let _ = write!(
                svg,
                r#"<g class="violation" id="violation-{index}" data-at="{:.3}" data-checker="{checker}"><line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{height:.1}"/><circle cx="{x:.1}" cy="{top:.1}" r="5"/>"#,
                at.as_secs_f64(),
                checker = finding.checker.name(),
                top = AXIS - 4.0,
            );
            // The first of each checker's violations is named beside its line.
            let first_of_checker = self.outcome.findings[..index]
                .iter()
                .all(|earlier| earlier.checker != finding.checker);
            if first_of_checker {
                let _ = write!(
                    svg,
                    r#"<text class="violation-label" x="{:.1}" y="{:.1}">{}</text>"#,
                    x + 8.0,
                    AXIS + 8.0,
                    finding.checker.name()
                );
            }
            let _ = write!(
                svg,
                "<title>{}  {}</title></g>",
                seconds(at),
                escape(&finding.line())
            );
        }
    }
}

/// A fault in a word or two, for its marker.
fn short_label(fault: &Fault) -> String {
    match fault.node() {
        Some(node) => format!("{} {node}", fault.kind()),
        None => fault.kind().to_string(),
    }
}

/// A tick spacing that gives roughly ten to twenty ticks.
fn tick_step(span_seconds: f64) -> f64 {
    const STEPS: [f64; 11] = [0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0];
    STEPS
        .into_iter()
        .find(|step| span_seconds / step <= 20.0)
        .unwrap_or(600.0)
}

fn violations_table(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return r#"<section><h2>Violations</h2><p id="violations" class="none">None: every checker passed.</p></section>"#
            .to_string();
    }
    let mut rows = String::new();
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|finding| finding.at.unwrap_or(Duration::MAX));
    for finding in sorted {
        let involved = &finding.involved;
        let _ = write!(
            rows,
            "<tr class=\"violation-row\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            finding.at.map_or("?".to_string(), seconds),
            finding.checker.name(),
            escape(
                &involved
                    .group
                    .as_ref()
                    .map_or(String::new(), |group| group.0.clone())
            ),
            escape(
                &involved
                    .nodes
                    .iter()
                    .map(NodeId::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            escape(&involved.keys.join(", ")),
            escape(&finding.detail),
        );
    }
    format!(
        r#"<section><h2>Violations</h2><table id="violations"><thead><tr><th>at</th><th>checker</th><th>group</th><th>nodes</th><th>keys</th><th>what</th></tr></thead><tbody>{rows}</tbody></table></section>"#
    )
}

fn faults_table(timeline: &Timeline) -> String {
    let mut rows = String::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for (index, (at, fault)) in timeline.faults().enumerate() {
        *counts.entry(fault.kind()).or_default() += 1;
        let _ = write!(
            rows,
            "<tr data-fault=\"fault-{index}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            seconds(at),
            fault.kind(),
            escape(&fault.to_string())
        );
    }
    if rows.is_empty() {
        return r#"<section><h2>Faults</h2><p id="faults" class="none">No fault was injected.</p></section>"#
            .to_string();
    }
    format!(
        r#"<section><h2>Faults</h2><table id="faults"><thead><tr><th>at</th><th>kind</th><th>what</th></tr></thead><tbody>{rows}</tbody></table></section>"#
    )
}

/// Text made safe for HTML (element content and quoted attributes).
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 20px 0 6px; }
code, pre { font: 12px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
pre#summary { background: #f6f7f9; border: 1px solid #dde; padding: 10px; overflow-x: auto; }
.verdict { display: inline-block; font-weight: 600; padding: 2px 10px; border-radius: 10px; margin: 4px 0; }
.verdict.passed { background: #dff3e0; color: #1b6b25; }
.verdict.failed { background: #fbe0e0; color: #a11; }
#drawing { position: relative; overflow-x: auto; border: 1px solid #dde; }
#timeline { display: block; background: #fff; }
#timeline text { font-size: 11px; fill: #333; }
#timeline .tick { fill: #666; }
#timeline .axis-title { fill: #888; font-style: italic; }
#timeline .grid { stroke: #eceef2; stroke-width: 1; }
#timeline .lane { fill: #fafbfc; stroke: #eceef2; }
#timeline .lane-label { font-weight: 600; }
#timeline .site-header { fill: #eef1f6; }
#timeline .site-label { font-weight: 600; fill: #345; }
#timeline .node-row { fill: #ffffff; }
#timeline .node-row.odd { fill: #f8f9fb; }
#timeline .member line { stroke-width: 2; }
#timeline .member.learner line { stroke-dasharray: 3 3; stroke-width: 1.5; }
#timeline .down rect { fill: #c9ccd3; opacity: 0.85; }
#timeline .down.lost rect { fill: #3b3f46; }
#timeline .partition rect { fill: url(#hatch); stroke: #7b5ea7; stroke-width: 0.5; }
#timeline .partition.cut rect { stroke: none; }
#timeline .fault path { fill: #d62728; stroke: #fff; stroke-width: 0.5; }
#timeline .fault.partition path { fill: #7b5ea7; }
#timeline .fault.lossy-links path, #timeline .fault.stale-route path { fill: #e6a100; }
#timeline .fault.clock-leap path, #timeline .fault.clock-drift path { fill: #17a2b8; }
#timeline .fault.site-returns path { fill: #2ca02c; }
#timeline .node-fault path { fill: none; stroke: #d62728; stroke-width: 2; }
#timeline .span-label { fill: #fff; font-weight: 600; }
#timeline .fault-label { fill: #a33; font-size: 10px; }
#timeline .membership-change line { stroke: #222; stroke-width: 1.5; }
#timeline .migration-progress { fill: none; stroke: #1f77b4; stroke-width: 2; }
#timeline .cutover line { stroke-width: 2; stroke-dasharray: 4 2; }
#timeline .faults-stop line { stroke: #2ca02c; stroke-width: 1.5; stroke-dasharray: 6 3; }
#timeline .faults-stop text { fill: #2ca02c; }
#timeline .violation line { stroke: #e00; stroke-width: 2; }
#timeline .violation circle { fill: #e00; }
#timeline .violation-label { fill: #e00; font-weight: 600; }
#timeline .cursor { stroke: #555; stroke-width: 1; stroke-dasharray: 2 2; pointer-events: none; }
#cursor-label { position: absolute; top: 2px; background: #333; color: #fff; font-size: 11px; padding: 1px 5px; border-radius: 3px; pointer-events: none; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border-bottom: 1px solid #e3e5ea; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td:first-child, td:nth-child(2) { white-space: nowrap; }
tr.highlight td { background: #fff4c2; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 12px; margin: 8px 0; }
.legend span { display: inline-flex; align-items: center; gap: 5px; }
.legend i { display: inline-block; width: 14px; height: 10px; }
"#;

const LEGEND: &str = r#"<div class="legend" id="legend">
<span><i style="background:#d62728;clip-path:polygon(50% 0,100% 50%,50% 100%,0 50%)"></i>fault</span>
<span><i style="background:repeating-linear-gradient(45deg,#b9a9d3 0 3px,#fff 3px 6px)"></i>partition (darker: cut off from more peers)</span>
<span><i style="background:#c9ccd3"></i>node down</span>
<span><i style="background:#3b3f46"></i>node lost</span>
<span><i style="border-top:2px solid #555;height:0"></i>voter of a group (colour)</span>
<span><i style="border-top:2px dashed #555;height:0"></i>learner</span>
<span><i style="background:#555;height:6px"></i>leader</span>
<span><i style="border-left:2px dashed #2ca02c;width:0"></i>faults stop</span>
<span><i style="border-left:2px solid #e00;width:0"></i>violation</span>
</div>"#;

/// A cursor that follows the pointer with the simulated time under it, and rows of the faults table
/// that light up their marker. Nothing is needed from outside the page.
const SCRIPT: &str = r#"
(function () {
  var svg = document.getElementById('timeline');
  var label = document.getElementById('cursor-label');
  var ns = 'http://www.w3.org/2000/svg';
  var left = +svg.dataset.left, right = +svg.dataset.right, span = +svg.dataset.span;
  var cursor = document.createElementNS(ns, 'line');
  cursor.setAttribute('class', 'cursor');
  cursor.setAttribute('y1', '0');
  cursor.setAttribute('y2', svg.getAttribute('height'));
  cursor.style.display = 'none';
  svg.appendChild(cursor);
  svg.addEventListener('mousemove', function (event) {
    var box = svg.getBoundingClientRect();
    var x = (event.clientX - box.left) * svg.viewBox.baseVal.width / box.width;
    if (x < left || x > right) { cursor.style.display = 'none'; label.hidden = true; return; }
    cursor.setAttribute('x1', x); cursor.setAttribute('x2', x); cursor.style.display = '';
    label.hidden = false;
    label.style.left = (event.clientX - box.left + 8) + 'px';
    label.textContent = ((x - left) / (right - left) * span).toFixed(3) + ' s';
  });
  svg.addEventListener('mouseleave', function () { cursor.style.display = 'none'; label.hidden = true; });
  document.querySelectorAll('tr[data-fault]').forEach(function (row) {
    var marker = document.getElementById(row.getAttribute('data-fault'));
    row.addEventListener('mouseenter', function () { row.classList.add('highlight'); if (marker) marker.setAttribute('transform', 'translate(0,-3)'); });
    row.addEventListener('mouseleave', function () { row.classList.remove('highlight'); if (marker) marker.removeAttribute('transform'); });
  });
  var count = function (selector) { return svg.querySelectorAll(selector).length; };
  document.body.setAttribute('data-rendered', 'yes');
  document.body.setAttribute('data-faults', count('#faults-lane .fault'));
  document.body.setAttribute('data-leaders', count('.leader'));
  document.body.setAttribute('data-violations', count('.violation'));
})();
"#;
