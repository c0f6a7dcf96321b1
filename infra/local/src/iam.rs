//! Least privilege, proven locally: every AWS call a function makes is
//! recorded as (function, IAM action, resource ARN) by a [`proxy`] of its own,
//! and [`check`] judges each record against that function's `Policies:` in
//! `template.yaml`. The emulator ignores IAM, so without this a missing grant
//! only shows once deployed.
//!
//! Only the functions' own SDK calls are recorded: the local bridges
//! (event source, Scheduler, streams) stand in for AWS services and call the
//! emulator directly.
//!
//! The mapping from a request to what IAM authorizes follows AWS's rules:
//! a batch SQS call needs the single action (`SendMessageBatch` →
//! `sqs:SendMessage`), a transaction needs each item's action on each item's
//! table, a query on an index needs the index's ARN, and creating or updating
//! a schedule with a role also needs `iam:PassRole` on that role.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::proxy::{self, Exchange, Observer, RunningProxy, Upstreams};

/// The account the emulator puts every resource in.
pub const LOCAL_ACCOUNT: &str = "123456789012";
/// What a resource we could not work out is recorded as (granted by nothing but `*`).
pub const UNKNOWN: &str = "unknown";
/// Stands for a record's stack name in [`Triple`]s, so one grant reads the same for every test stack.
pub const STACK: &str = "{stack}";

/// One thing IAM authorizes for one call of one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The local stack the function belongs to (resource names start with it).
    pub stack: String,
    /// The function's binary: `api`, `sender`, `reconciler`, `counter`.
    pub function: String,
    pub region: String,
    /// The API operation called (`TransactWriteItems`, `SendMessageBatch`, `POST /schedules`, …).
    pub op: String,
    /// The IAM action needed (`dynamodb:UpdateItem`, `sqs:SendMessage`, `iam:PassRole`, …).
    pub action: String,
    /// The resource ARN it is needed on, or `*` for actions on no resource.
    pub resource: String,
}

/// `(action, resource)` pairs IAM authorizes for one request, and the operation's name.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization {
    pub op: String,
    pub needs: Vec<(String, String)>,
}

/// What IAM authorizes for this request (region from its signature, account: the emulator's).
pub fn authorization(exchange: &Exchange<'_>) -> Authorization {
    let region = proxy::signing_scope(exchange.headers).map_or("us-east-1", |(r, _)| r);
    let body: Json = serde_json::from_slice(exchange.request).unwrap_or(Json::Null);
    let target = exchange.headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    match target.and_then(|t| t.split_once('.')) {
        Some((p, op)) if p.starts_with("DynamoDBStreams_") => dynamodb_streams(op, &body),
        Some((p, op)) if p.starts_with("DynamoDB_") => dynamodb(op, &body, region),
        Some(("AmazonSQS", op)) => sqs(op, |k| body[k].as_str().map(str::to_owned), region),
        Some(("TrentService", op)) => kms(op, &body, region),
        Some(("AWSEvents", op)) => events(op, &body, region),
        Some(_) => unknown(target.unwrap_or_default()),
        None => match proxy::signing_scope(exchange.headers).map(|(_, s)| s) {
            Some("sqs") => {
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(exchange.request).into_owned().collect();
                let op = form.get("Action").cloned().unwrap_or_default();
                sqs(&op, |k| form.get(k).cloned(), region)
            }
            Some("scheduler") => scheduler(exchange, &body, region),
            Some("s3") => s3(exchange),
            _ => unknown(&format!("{} {}", exchange.method, exchange.uri.path())),
        },
    }
}

fn unknown(what: &str) -> Authorization {
    Authorization { op: what.to_owned(), needs: vec![(format!("unknown:{what}"), UNKNOWN.to_owned())] }
}

fn table_arn(region: &str, table: &str) -> String {
    if table.starts_with("arn:") {
        table.to_owned()
    } else {
        format!("arn:aws:dynamodb:{region}:{LOCAL_ACCOUNT}:table/{table}")
    }
}

fn dynamodb(op: &str, body: &Json, region: &str) -> Authorization {
    let action = |a: &str| format!("dynamodb:{a}");
    let table = |v: &Json| v.as_str().map_or_else(|| UNKNOWN.to_owned(), |t| table_arn(region, t));
    let mut needs = Vec::new();
    match op {
        "BatchGetItem" | "BatchWriteItem" => {
            for name in body["RequestItems"].as_object().into_iter().flat_map(|o| o.keys()) {
                needs.push((action(op), table_arn(region, name)));
            }
        }
        "TransactWriteItems" | "TransactGetItems" => {
            for item in body["TransactItems"].as_array().into_iter().flatten() {
                for (kind, item_action) in [
                    ("Put", "PutItem"),
                    ("Update", "UpdateItem"),
                    ("Delete", "DeleteItem"),
                    ("ConditionCheck", "ConditionCheckItem"),
                    ("Get", "GetItem"),
                ] {
                    if let Some(inner) = item.get(kind) {
                        needs.push((action(item_action), table(&inner["TableName"])));
                    }
                }
            }
        }
        "ListTables" => needs.push((action(op), "*".to_owned())),
        _ => {
            let mut resource = table(&body["TableName"]);
            if let Some(index) = body["IndexName"].as_str() {
                resource = format!("{resource}/index/{index}");
            }
            needs.push((action(op), resource));
        }
    }
    needs.dedup();
    Authorization { op: op.to_owned(), needs }
}

/// A KMS call needs its action on the key it names (an ARN, or a key id in
/// this account; an alias names no key IAM can check, so it is unknown).
fn kms(op: &str, body: &Json, region: &str) -> Authorization {
    let resource = match body["KeyId"].as_str() {
        Some(arn) if arn.starts_with("arn:") => arn.to_owned(),
        Some(id) if !id.starts_with("alias/") => format!("arn:aws:kms:{region}:{LOCAL_ACCOUNT}:key/{id}"),
        _ => UNKNOWN.to_owned(),
    };
    Authorization { op: op.to_owned(), needs: vec![(format!("kms:{op}"), resource)] }
}

/// An EventBridge call: `PutEvents` needs its action on each bus its entries
/// name (a name or an ARN; none is the default bus).
fn events(op: &str, body: &Json, region: &str) -> Authorization {
    let bus_arn = |name: &str| {
        if name.starts_with("arn:") {
            name.to_owned()
        } else {
            format!("arn:aws:events:{region}:{LOCAL_ACCOUNT}:event-bus/{name}")
        }
    };
    let mut needs: Vec<(String, String)> = match op {
        "PutEvents" => body["Entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (format!("events:{op}"), bus_arn(e["EventBusName"].as_str().unwrap_or("default"))))
            .collect(),
        _ => vec![(format!("events:{op}"), body["Name"].as_str().map_or_else(|| UNKNOWN.to_owned(), bus_arn))],
    };
    needs.sort();
    needs.dedup();
    Authorization { op: op.to_owned(), needs }
}

fn dynamodb_streams(op: &str, body: &Json) -> Authorization {
    let resource = match op {
        "ListStreams" => "*".to_owned(),
        // A shard iterator does not name its stream in a way IAM documents.
        _ => body["StreamArn"].as_str().unwrap_or(UNKNOWN).to_owned(),
    };
    Authorization { op: op.to_owned(), needs: vec![(format!("dynamodb:{op}"), resource)] }
}

/// The queue's ARN from its URL (`…/<account>/<name>`).
fn queue_arn(region: &str, queue_url: &str) -> String {
    let mut segments = queue_url.trim_end_matches('/').rsplit('/');
    match (segments.next(), segments.next()) {
        (Some(name), Some(account)) if !name.is_empty() && account.bytes().all(|b| b.is_ascii_digit()) => {
            format!("arn:aws:sqs:{region}:{account}:{name}")
        }
        _ => UNKNOWN.to_owned(),
    }
}

fn sqs(op: &str, get: impl Fn(&str) -> Option<String>, region: &str) -> Authorization {
    // Batch calls are authorized as their single action.
    let action = op.strip_suffix("Batch").unwrap_or(op);
    let resource = match op {
        "ListQueues" => "*".to_owned(),
        "GetQueueUrl" | "CreateQueue" => match get("QueueName") {
            Some(name) => {
                let account = get("QueueOwnerAWSAccountId").unwrap_or_else(|| LOCAL_ACCOUNT.to_owned());
                format!("arn:aws:sqs:{region}:{account}:{name}")
            }
            None => UNKNOWN.to_owned(),
        },
        _ => get("QueueUrl").map_or_else(|| UNKNOWN.to_owned(), |u| queue_arn(region, &u)),
    };
    Authorization { op: op.to_owned(), needs: vec![(format!("sqs:{action}"), resource)] }
}

fn percent_decoded(s: &str) -> String {
    let escaped = s.replace('+', "%2B").replace('&', "%26").replace('=', "%3D");
    url::form_urlencoded::parse(escaped.as_bytes()).map(|(k, _)| k.into_owned()).next().unwrap_or_default()
}

/// An S3 call (path-style): an object's action on `arn:aws:s3:::bucket/key`,
/// a bucket's on `arn:aws:s3:::bucket`.
fn s3(exchange: &Exchange<'_>) -> Authorization {
    let path = exchange.uri.path().trim_start_matches('/');
    let (bucket, key) = path.split_once('/').map_or((path, ""), |(b, k)| (b, k));
    let (op, resource) = match (exchange.method.as_str(), key.is_empty()) {
        ("PUT", false) => ("PutObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("GET", false) => ("GetObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("DELETE", false) => ("DeleteObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("GET", true) => ("ListBucket", format!("arn:aws:s3:::{bucket}")),
        ("PUT", true) => ("CreateBucket", format!("arn:aws:s3:::{bucket}")),
        (m, _) => return unknown(&format!("s3 {m} {path}")),
    };
    Authorization { op: op.to_owned(), needs: vec![(format!("s3:{op}"), resource)] }
}

fn scheduler(exchange: &Exchange<'_>, body: &Json, region: &str) -> Authorization {
    let path: Vec<String> = exchange.uri.path().trim_matches('/').split('/').map(percent_decoded).collect();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(exchange.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let method = exchange.method.as_str();
    let arn = |kind: &str, rest: &str| format!("arn:aws:scheduler:{region}:{LOCAL_ACCOUNT}:{kind}/{rest}");
    let (action, resource) = match (method, path.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
        (_, ["schedules", name]) => {
            let group = body["GroupName"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| query.get("groupName").cloned())
                .unwrap_or_else(|| "default".to_owned());
            let action = match method {
                "POST" => "CreateSchedule",
                "PUT" => "UpdateSchedule",
                "DELETE" => "DeleteSchedule",
                _ => "GetSchedule",
            };
            (action, arn("schedule", &format!("{group}/{name}")))
        }
        ("GET", ["schedules"]) => ("ListSchedules", "*".to_owned()),
        (_, ["schedule-groups", name]) => {
            let action = match method {
                "POST" => "CreateScheduleGroup",
                "DELETE" => "DeleteScheduleGroup",
                _ => "GetScheduleGroup",
            };
            (action, arn("schedule-group", name))
        }
        ("GET", ["schedule-groups"]) => ("ListScheduleGroups", "*".to_owned()),
        _ => return unknown(&format!("scheduler {method} {}", exchange.uri.path())),
    };
    let mut needs = vec![(format!("scheduler:{action}"), resource)];
    if let Some(role) =
        body["Target"]["RoleArn"].as_str().filter(|_| matches!(action, "CreateSchedule" | "UpdateSchedule"))
    {
        needs.push(("iam:PassRole".to_owned(), role.to_owned()));
    }
    Authorization { op: format!("{method} /{}", path.first().map_or("", String::as_str)), needs }
}

/// Writes one JSON line per authorization of every call of one function.
struct Recorder {
    stack: String,
    function: String,
    file: Mutex<std::fs::File>,
}

impl Observer for Recorder {
    fn observe(&self, exchange: &Exchange<'_>) {
        let region = proxy::signing_scope(exchange.headers).map_or("us-east-1", |(r, _)| r).to_owned();
        let auth = authorization(exchange);
        let mut lines = String::new();
        for (action, resource) in auth.needs {
            let record = Record {
                stack: self.stack.clone(),
                function: self.function.clone(),
                region: region.clone(),
                op: auth.op.clone(),
                action,
                resource,
            };
            if let Ok(line) = serde_json::to_string(&record) {
                lines.push_str(&line);
                lines.push('\n');
            }
        }
        // One append per call: lines of concurrent recorders sharing the file do not interleave.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(lines.as_bytes()) {
            tracing::error!(error = %e, "could not record an IAM call");
        }
    }
}

/// Starts a proxy that forwards `function`'s AWS calls to `upstreams` and
/// appends what each needs from IAM to `log` (JSON lines of [`Record`]).
pub async fn record(stack: &str, function: &str, log: &Path, upstreams: Upstreams) -> std::io::Result<RunningProxy> {
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let recorder = Recorder { stack: stack.to_owned(), function: function.to_owned(), file: Mutex::new(file) };
    proxy::start(upstreams, Arc::new(recorder)).await
}

/// The template could not be judged, or the log read.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A policy form the checker does not evaluate (it would rather refuse than guess).
    #[error("{function}: unsupported policy form: {what}")]
    Unsupported { function: String, what: String },
    #[error("cannot resolve {0}")]
    Unresolvable(String),
    #[error("template: {0}")]
    Template(String),
    #[error("log line {line}: {source}")]
    Log { line: usize, source: serde_json::Error },
}

/// One allow or deny statement, resolved for one region.
#[derive(Clone, Debug)]
struct Statement {
    sid: String,
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
}

/// `(function, action, resource)` with the stack name as [`STACK`] and a
/// schedule's name (a task id) as [`NAME`].
pub type Triple = (String, String, String);

/// Stands for a schedule's own name in [`Triple`]s (one per task).
pub const NAME: &str = "{name}";

/// `…:schedule/<group>/<name>` → `…:schedule/<group>/{name}`, for counting
/// distinct grants rather than distinct tasks.
fn collapse_names(resource: &str) -> String {
    match resource.split_once(":schedule/") {
        Some((head, rest)) if rest.contains('/') => {
            let group = rest.rsplit_once('/').map_or(rest, |(g, _)| g);
            format!("{head}:schedule/{group}/{NAME}")
        }
        _ => resource.to_owned(),
    }
}

/// The verdict on a log.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Records judged (one per action and resource of a call).
    pub records: usize,
    /// Every distinct (function, action, resource) seen, with how often.
    pub seen: BTreeMap<Triple, usize>,
    /// Those no statement of the function allows (or one denies), with why.
    pub denied: BTreeMap<Triple, String>,
    /// `(function, sid, action, resource)` granted but never used by any record.
    pub unused: Vec<(String, String, String, String)>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.records > 0 && self.denied.is_empty()
    }
}

/// How local resources map to what the template names when the template
/// does not give the name (roles CloudFormation would name).
#[derive(Clone, Debug, Default)]
pub struct LocalIdentities {
    /// Logical id of an `AWS::IAM::Role` → its local ARN.
    pub roles: HashMap<String, String>,
}

impl LocalIdentities {
    /// What the local bootstrap uses.
    pub fn of_local_stack() -> Self {
        Self { roles: [("SchedulerRole".to_owned(), crate::bootstrap::LOCAL_SCHEDULER_ROLE.to_owned())].into() }
    }
}

/// Resolves CloudFormation expressions for one stack name and region.
struct Resolver<'a> {
    template: &'a Yaml,
    stack: &'a str,
    region: &'a str,
    local: &'a LocalIdentities,
}

/// `(function, argument)` of an intrinsic, short (`!Sub`) or long (`Fn::Sub`) form.
fn tagged(v: &Yaml) -> Option<(String, &Yaml)> {
    match v {
        Yaml::Tagged(t) => Some((t.tag.to_string().trim_start_matches('!').to_owned(), &t.value)),
        Yaml::Mapping(m) if m.len() == 1 => {
            let (k, v) = m.iter().next()?;
            let k = k.as_str()?;
            match k {
                "Ref" => Some(("Ref".to_owned(), v)),
                _ => k.strip_prefix("Fn::").map(|f| (f.to_owned(), v)),
            }
        }
        _ => None,
    }
}

impl Resolver<'_> {
    fn resource(&self, id: &str) -> Option<&Yaml> {
        self.template["Resources"].get(id)
    }

    fn property(&self, id: &str, name: &str) -> Result<String, CheckError> {
        let r = self.resource(id).ok_or_else(|| CheckError::Unresolvable(format!("resource {id}")))?;
        let v = &r["Properties"][name];
        if v.is_null() {
            return Err(CheckError::Unresolvable(format!("{id} has no {name} (the local stack needs a fixed name)")));
        }
        self.string(v)
    }

    fn reference(&self, name: &str) -> Result<String, CheckError> {
        match name {
            "AWS::Partition" => return Ok("aws".to_owned()),
            "AWS::Region" => return Ok(self.region.to_owned()),
            "AWS::AccountId" => return Ok(LOCAL_ACCOUNT.to_owned()),
            "AWS::StackName" => return Ok(self.stack.to_owned()),
            "AWS::URLSuffix" => return Ok("amazonaws.com".to_owned()),
            _ => {}
        }
        if let Some(p) = self.template["Parameters"].get(name) {
            return match &p["Default"] {
                Yaml::String(s) => Ok(s.clone()),
                Yaml::Number(n) => Ok(n.to_string()),
                _ => Err(CheckError::Unresolvable(format!("parameter {name} has no default"))),
            };
        }
        let kind = self.resource(name).and_then(|r| r["Type"].as_str()).unwrap_or_default();
        match kind {
            "AWS::DynamoDB::Table" => self.property(name, "TableName"),
            "AWS::Scheduler::ScheduleGroup" => self.property(name, "Name"),
            "AWS::Events::EventBus" => self.property(name, "Name"),
            "AWS::S3::Bucket" => self.property(name, "BucketName"),
            "AWS::SQS::Queue" => Ok(format!(
                // A queue's `!Ref` is its URL; no policy compares it, so a host-free form does.
                "queue-url:{}:{LOCAL_ACCOUNT}:{}",
                self.region,
                self.property(name, "QueueName")?
            )),
            _ => Err(CheckError::Unresolvable(format!("!Ref {name} ({kind})"))),
        }
    }

    fn attribute(&self, id: &str, attr: &str) -> Result<String, CheckError> {
        let kind = self.resource(id).and_then(|r| r["Type"].as_str()).unwrap_or_default();
        let region = self.region;
        match (kind, attr) {
            ("AWS::DynamoDB::Table", "Arn") => Ok(table_arn(region, &self.property(id, "TableName")?)),
            // The stream's label is chosen when it is created.
            ("AWS::DynamoDB::Table", "StreamArn") => Ok(format!("{}/stream/*", self.attribute(id, "Arn")?)),
            ("AWS::SQS::Queue", "Arn") => {
                Ok(format!("arn:aws:sqs:{region}:{LOCAL_ACCOUNT}:{}", self.property(id, "QueueName")?))
            }
            ("AWS::SQS::Queue", "QueueName") => self.property(id, "QueueName"),
            // A key's id is chosen when it is created (the local bootstrap finds it by alias).
            ("AWS::KMS::Key", "Arn") => Ok(format!("arn:aws:kms:{region}:{LOCAL_ACCOUNT}:key/*")),
            ("AWS::S3::Bucket", "Arn") => Ok(format!("arn:aws:s3:::{}", self.property(id, "BucketName")?)),
            ("AWS::Events::EventBus", "Arn") => {
                Ok(format!("arn:aws:events:{region}:{LOCAL_ACCOUNT}:event-bus/{}", self.property(id, "Name")?))
            }
            ("AWS::Scheduler::ScheduleGroup", "Arn") => {
                Ok(format!("arn:aws:scheduler:{region}:{LOCAL_ACCOUNT}:schedule-group/{}", self.property(id, "Name")?))
            }
            ("AWS::IAM::Role", "Arn") => match self.local.roles.get(id) {
                Some(arn) => Ok(arn.clone()),
                None => Ok(format!("arn:aws:iam::{LOCAL_ACCOUNT}:role/{}", self.property(id, "RoleName")?)),
            },
            _ => Err(CheckError::Unresolvable(format!("!GetAtt {id}.{attr} ({kind})"))),
        }
    }

    /// `!Sub`: `${AWS::…}`, `${Param}`, `${Resource}`, `${Resource.Attr}`, `${!Literal}`, and variables.
    fn sub(&self, text: &str, vars: &HashMap<String, String>) -> Result<String, CheckError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .map(|e| e + start)
                .ok_or_else(|| CheckError::Template(format!("unclosed ${{ in !Sub {text:?}")))?;
            let name = &rest[start + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
            } else if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else if let Some((id, attr)) = name.split_once('.') {
                out.push_str(&self.attribute(id, attr)?);
            } else {
                out.push_str(&self.reference(name)?);
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn string(&self, v: &Yaml) -> Result<String, CheckError> {
        // Not `as_str`: it would read through a tag (`!GetAtt X.Arn` → "X.Arn").
        if let Yaml::String(s) = v {
            return Ok(s.clone());
        }
        match tagged(v).as_ref().map(|(f, arg)| (f.as_str(), *arg)) {
            Some(("Ref", name)) => self.reference(name.as_str().unwrap_or_default()),
            Some(("GetAtt", arg)) => {
                let (id, attr) = match arg {
                    Yaml::String(s) => s.split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())),
                    Yaml::Sequence(s) => match s.as_slice() {
                        [a, b] => Some((a.as_str().unwrap_or_default().to_owned(), self.string(b)?)),
                        _ => None,
                    },
                    _ => None,
                }
                .ok_or_else(|| CheckError::Template(format!("bad !GetAtt {arg:?}")))?;
                self.attribute(&id, &attr)
            }
            Some(("Sub", Yaml::String(text))) => self.sub(text, &HashMap::new()),
            Some(("Sub", Yaml::Sequence(parts))) => {
                let text = parts.first().and_then(Yaml::as_str).unwrap_or_default();
                let mut vars = HashMap::new();
                for (k, v) in parts.get(1).and_then(Yaml::as_mapping).into_iter().flatten() {
                    vars.insert(k.as_str().unwrap_or_default().to_owned(), self.string(v)?);
                }
                self.sub(text, &vars)
            }
            _ => Err(CheckError::Unresolvable(format!("{v:?}"))),
        }
    }

    fn strings(&self, v: &Yaml) -> Result<Vec<String>, CheckError> {
        match v {
            Yaml::Sequence(items) => items.iter().map(|i| self.string(i)).collect(),
            one => Ok(vec![self.string(one)?]),
        }
    }

    /// The statements of a SAM function's `Policies:` (inline statements only).
    fn policies(&self, function: &str) -> Result<Vec<Statement>, CheckError> {
        let unsupported = |what: String| CheckError::Unsupported { function: function.to_owned(), what };
        let props = &self.template["Resources"][function]["Properties"];
        if !props["Role"].is_null() {
            return Err(unsupported("Role (a role defined elsewhere)".to_owned()));
        }
        let policies = match &props["Policies"] {
            Yaml::Null => return Ok(Vec::new()),
            Yaml::Sequence(p) => p.clone(),
            one => vec![one.clone()],
        };
        let mut out = Vec::new();
        for policy in &policies {
            let statements = match policy.get("Statement") {
                Some(Yaml::Sequence(s)) => s.clone(),
                Some(one @ Yaml::Mapping(_)) => vec![one.clone()],
                // Managed policy names and SAM policy templates are not evaluated here.
                _ => return Err(unsupported(format!("{policy:?}"))),
            };
            for (i, s) in statements.iter().enumerate() {
                for key in ["NotAction", "NotResource", "Condition", "Principal", "NotPrincipal"] {
                    if s.get(key).is_some() {
                        return Err(unsupported(format!("statement with {key}")));
                    }
                }
                let allow = match s["Effect"].as_str() {
                    Some("Allow") => true,
                    Some("Deny") => false,
                    other => return Err(unsupported(format!("Effect {other:?}"))),
                };
                out.push(Statement {
                    sid: s["Sid"].as_str().map_or_else(|| format!("#{i}"), str::to_owned),
                    allow,
                    actions: self.strings(&s["Action"])?,
                    resources: self.strings(&s["Resource"])?,
                });
            }
        }
        Ok(out)
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` any one.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn action_match(pattern: &str, action: &str) -> bool {
    wildcard_match(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase())
}

/// The template's functions by binary name (`Metadata.BuildProperties.Binary`).
fn functions_by_binary(template: &Yaml) -> BTreeMap<String, String> {
    template["Resources"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .filter_map(|(id, r)| {
            Some((r["Metadata"]["BuildProperties"]["Binary"].as_str()?.to_owned(), id.as_str()?.to_owned()))
        })
        .collect()
}

/// Parses a JSON-lines log of [`Record`]s (blank lines skipped).
pub fn read_log(text: &str) -> Result<Vec<Record>, CheckError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|source| CheckError::Log { line: i + 1, source }))
        .collect()
}

/// Judges every record against its function's policy in `template`.
pub fn check(template: &Yaml, records: &[Record], local: &LocalIdentities) -> Result<Verdict, CheckError> {
    let functions = functions_by_binary(template);
    // Resolved with the stack name as a placeholder, once per region: records
    // are compared with their own stack name replaced by the same placeholder.
    let mut policies: HashMap<(String, String), Vec<Statement>> = HashMap::new();
    let mut regions = BTreeSet::new();
    let mut verdict = Verdict { records: records.len(), ..Default::default() };
    let mut used: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for r in records {
        let resource = if r.stack.is_empty() { r.resource.clone() } else { r.resource.replace(&r.stack, STACK) };
        let triple = (r.function.clone(), r.action.clone(), collapse_names(&resource));
        *verdict.seen.entry(triple.clone()).or_default() += 1;
        let Some(logical) = functions.get(&r.function) else {
            verdict.denied.insert(triple, format!("no function with binary {:?} in the template", r.function));
            continue;
        };
        regions.insert(r.region.clone());
        let key = (logical.clone(), r.region.clone());
        if !policies.contains_key(&key) {
            let resolver = Resolver { template, stack: STACK, region: &r.region, local };
            policies.insert(key.clone(), resolver.policies(logical)?);
        }
        let statements = &policies[&key];
        let mut allowed_by = Vec::new();
        let mut denied_by = None;
        for s in statements {
            for a in s.actions.iter().filter(|a| action_match(a, &r.action)) {
                for res in s.resources.iter().filter(|p| wildcard_match(p, &resource)) {
                    if s.allow {
                        allowed_by.push((logical.clone(), s.sid.clone(), a.clone(), res.clone()));
                    } else {
                        denied_by = Some(s.sid.clone());
                    }
                }
            }
        }
        match (denied_by, allowed_by.is_empty()) {
            (Some(sid), _) => {
                verdict.denied.insert(triple, format!("denied by {logical} statement {sid}"));
            }
            (None, true) => {
                verdict.denied.insert(triple, format!("{logical} grants no {} on it (op {})", r.action, r.op));
            }
            (None, false) => used.extend(allowed_by),
        }
    }
    // Grants no record needed, per function that made calls (a hint at what could go).
    for ((logical, region), statements) in &policies {
        if regions.iter().next() != Some(region) {
            continue;
        }
        for s in statements.iter().filter(|s| s.allow) {
            for a in &s.actions {
                for res in &s.resources {
                    let grant = (logical.clone(), s.sid.clone(), a.clone(), res.clone());
                    if !used.contains(&grant) {
                        verdict.unused.push(grant);
                    }
                }
            }
        }
    }
    verdict.unused.sort();
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use serde_json::json;

    use super::*;

    const SIGNED: &str = "AWS4-HMAC-SHA256 Credential=test/20261123/us-east-1/SERVICE/aws4_request, \
                          SignedHeaders=host, Signature=0";

    fn authorize(method: &str, uri: &str, target: Option<&str>, service: &str, body: &[u8]) -> Authorization {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", SIGNED.replace("SERVICE", service).parse().expect("header"));
        if let Some(t) = target {
            headers.insert("x-amz-target", t.parse().expect("header"));
        }
        let (method, uri): (Method, Uri) = (method.parse().expect("method"), uri.parse().expect("uri"));
        authorization(&Exchange {
            method: &method,
            uri: &uri,
            headers: &headers,
            request: body,
            status: StatusCode::OK,
            response: b"",
        })
    }

    fn dynamo(op: &str, body: Json) -> Vec<(String, String)> {
        authorize("POST", "/", Some(&format!("DynamoDB_20120810.{op}")), "dynamodb", body.to_string().as_bytes()).needs
    }

    fn need(action: &str, resource: &str) -> (String, String) {
        (action.to_owned(), resource.to_owned())
    }

    const TABLE: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/s-tasks";

    #[test]
    fn a_dynamodb_call_needs_its_action_on_its_table_or_index() {
        assert_eq!(dynamo("PutItem", json!({"TableName": "s-tasks"})), [need("dynamodb:PutItem", TABLE)]);
        assert_eq!(
            dynamo("Query", json!({"TableName": "s-tasks", "IndexName": "by-tenant"})),
            [need("dynamodb:Query", &format!("{TABLE}/index/by-tenant"))]
        );
        assert_eq!(
            dynamo("BatchGetItem", json!({"RequestItems": {"s-tasks": {}, "other": {}}})),
            [
                need("dynamodb:BatchGetItem", "arn:aws:dynamodb:us-east-1:123456789012:table/other"),
                need("dynamodb:BatchGetItem", TABLE)
            ]
        );
    }

    #[test]
    fn a_transaction_needs_each_items_action() {
        let body = json!({"TransactItems": [
            {"Put": {"TableName": "s-tasks"}},
            {"Update": {"TableName": "s-tasks"}},
            {"ConditionCheck": {"TableName": "s-tasks"}},
            {"Delete": {"TableName": "s-tasks"}},
        ]});
        assert_eq!(
            dynamo("TransactWriteItems", body),
            [
                need("dynamodb:PutItem", TABLE),
                need("dynamodb:UpdateItem", TABLE),
                need("dynamodb:ConditionCheckItem", TABLE),
                need("dynamodb:DeleteItem", TABLE)
            ]
        );
    }

    #[test]
    fn a_kms_call_needs_its_action_on_the_key_it_names() {
        let arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let body = serde_json::json!({"KeyId": arn, "Plaintext": "AAAA"}).to_string();
        let a = authorize("POST", "/", Some("TrentService.Encrypt"), "kms", body.as_bytes());
        assert_eq!(a.needs, vec![need("kms:Encrypt", arn)]);
        let body = serde_json::json!({"KeyId": "alias/s-signing"}).to_string();
        let a = authorize("POST", "/", Some("TrentService.Decrypt"), "kms", body.as_bytes());
        assert_eq!(a.needs, vec![need("kms:Decrypt", UNKNOWN)]);
    }

    #[test]
    fn put_events_needs_its_action_on_each_bus_it_names() {
        let body = json!({"Entries": [{"EventBusName": "s-events"}, {"EventBusName": "s-events"}, {"Source": "x"}]});
        let a = authorize("POST", "/", Some("AWSEvents.PutEvents"), "events", body.to_string().as_bytes());
        assert_eq!(
            a.needs,
            vec![
                need("events:PutEvents", "arn:aws:events:us-east-1:123456789012:event-bus/default"),
                need("events:PutEvents", "arn:aws:events:us-east-1:123456789012:event-bus/s-events"),
            ]
        );
    }

    #[test]
    fn a_batch_sqs_call_needs_the_single_action_on_the_queue() {
        let queue = "arn:aws:sqs:us-east-1:123456789012:s-delivery";
        let body = json!({"QueueUrl": "http://127.0.0.1:4566/123456789012/s-delivery", "Entries": []});
        let json_protocol =
            authorize("POST", "/", Some("AmazonSQS.SendMessageBatch"), "sqs", body.to_string().as_bytes());
        assert_eq!(json_protocol.needs, [need("sqs:SendMessage", queue)]);
        assert_eq!(json_protocol.op, "SendMessageBatch");
        let form = b"Action=ChangeMessageVisibility&QueueUrl=http%3A%2F%2F127.0.0.1%3A4566%2F123456789012%2Fs-delivery";
        assert_eq!(authorize("POST", "/", None, "sqs", form).needs, [need("sqs:ChangeMessageVisibility", queue)]);
    }

    #[test]
    fn creating_a_schedule_with_a_role_also_needs_pass_role() {
        let body = json!({"GroupName": "s-schedules", "Target": {"RoleArn": "arn:aws:iam::123456789012:role/r"}});
        let auth = authorize("POST", "/schedules/tsk_1", None, "scheduler", body.to_string().as_bytes());
        assert_eq!(
            auth.needs,
            [
                need("scheduler:CreateSchedule", "arn:aws:scheduler:us-east-1:123456789012:schedule/s-schedules/tsk_1"),
                need("iam:PassRole", "arn:aws:iam::123456789012:role/r")
            ]
        );
        let delete =
            authorize("DELETE", "/schedules/tsk_1?groupName=s-schedules&clientToken=x", None, "scheduler", b"");
        assert_eq!(
            delete.needs,
            [need("scheduler:DeleteSchedule", "arn:aws:scheduler:us-east-1:123456789012:schedule/s-schedules/tsk_1")]
        );
    }

    #[test]
    fn a_call_the_recorder_does_not_understand_needs_an_unknown_action() {
        let auth = authorize("POST", "/", Some("Logs_20140328.PutLogEvents"), "logs", b"{}");
        assert_eq!(auth.needs, [need("unknown:Logs_20140328.PutLogEvents", UNKNOWN)]);
    }

    #[test]
    fn wildcards_match_any_run_or_one_character() {
        assert!(wildcard_match("arn:aws:dynamodb:*:table/t/index/*", "arn:aws:dynamodb:r:1:table/t/index/by-recon"));
        assert!(!wildcard_match("arn:aws:dynamodb:*:table/t", "arn:aws:dynamodb:r:1:table/t/index/by-recon"));
        assert!(wildcard_match("sqs:?endMessage", "sqs:SendMessage"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "ac"));
        assert!(action_match("DynamoDB:Get*", "dynamodb:GetItem"));
    }

    fn template() -> Yaml {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("template.yaml")).expect("YAML")
    }

    fn record(function: &str, action: &str, resource: &str) -> Record {
        Record {
            stack: "it-x-1".into(),
            function: function.into(),
            region: "us-east-1".into(),
            op: action.split(':').nth(1).unwrap_or_default().into(),
            action: action.into(),
            resource: resource.into(),
        }
    }

    const IT_TABLE: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/it-x-1-tasks";

    fn judge(records: &[Record]) -> Verdict {
        check(&template(), records, &LocalIdentities::of_local_stack()).expect("the template resolves")
    }

    #[test]
    fn a_call_the_template_grants_passes() {
        let v = judge(&[
            record("api", "dynamodb:PutItem", IT_TABLE),
            record("api", "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:it-x-1-delivery"),
            record("api", "iam:PassRole", crate::bootstrap::LOCAL_SCHEDULER_ROLE),
            record(
                "api",
                "scheduler:CreateSchedule",
                "arn:aws:scheduler:us-east-1:123456789012:schedule/it-x-1-schedules/tsk_1",
            ),
            record(
                "api",
                "scheduler:CreateSchedule",
                "arn:aws:scheduler:us-east-1:123456789012:schedule/it-x-1-schedules/tsk_2",
            ),
        ]);
        assert!(v.passed(), "{:?}", v.denied);
        // One grant per stack-independent resource: stack names and schedule names collapse.
        assert_eq!(v.seen.len(), 4, "{:?}", v.seen);
        assert!(v.seen.contains_key(&("api".into(), "dynamodb:PutItem".into(), IT_TABLE.replace("it-x-1", STACK))));
        let schedules = format!("arn:aws:scheduler:us-east-1:123456789012:schedule/{STACK}-schedules/{NAME}");
        assert_eq!(v.seen.get(&("api".into(), "scheduler:CreateSchedule".into(), schedules)), Some(&2));
    }

    #[test]
    fn the_senders_replay_calls_are_granted_on_their_resources() {
        // A replay page runs in the sender: it lists failed tasks through the
        // tenant index, reads their states in a batch and enqueues them.
        let v = judge(&[
            record("sender", "dynamodb:Query", &format!("{IT_TABLE}/index/by-tenant")),
            record("sender", "dynamodb:BatchGetItem", IT_TABLE),
            record("sender", "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:it-x-1-delivery"),
        ]);
        assert!(v.passed(), "{:?}", v.denied);
        // …but not the reconciler's index.
        let v = judge(&[record("sender", "dynamodb:Query", &format!("{IT_TABLE}/index/by-recon"))]);
        assert_eq!(v.denied.len(), 1);
    }

    #[test]
    fn an_action_the_template_does_not_grant_fails() {
        let v = judge(&[
            record("counter", "dynamodb:DeleteTable", IT_TABLE),
            record("counter", "dynamodb:UpdateItem", IT_TABLE),
        ]);
        assert!(!v.passed());
        assert_eq!(v.denied.len(), 1, "{:?}", v.denied);
        assert!(v.denied.keys().all(|(f, a, _)| f == "counter" && a == "dynamodb:DeleteTable"));
    }

    #[test]
    fn a_granted_action_on_another_resource_fails() {
        // The counter may update the table, not query its index; the sender may
        // send to the DLQ; the API may not send to another stack's queue.
        let v = judge(&[
            record("counter", "dynamodb:Query", &format!("{IT_TABLE}/index/by-tenant")),
            record("api", "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:it-other-delivery"),
            record("api", "iam:PassRole", "arn:aws:iam::123456789012:role/admin"),
        ]);
        assert_eq!(v.denied.len(), 3, "{:?}", v.denied);
    }

    #[test]
    fn an_empty_log_or_an_unknown_function_does_not_pass() {
        assert!(!judge(&[]).passed(), "the proof must not pass vacuously");
        let v = judge(&[record("mailer", "dynamodb:GetItem", IT_TABLE)]);
        assert!(!v.passed());
    }

    #[test]
    fn deny_statements_win_and_unsupported_forms_are_refused() {
        let t: Yaml = serde_yaml::from_str(
            r#"
Parameters:
  Group: {Type: String, Default: g}
Resources:
  T: {Type: AWS::DynamoDB::Table, Properties: {TableName: !Sub "${AWS::StackName}-t"}}
  F:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: f}}
    Properties:
      Policies:
        - Statement:
            - {Effect: Allow, Action: "dynamodb:*", Resource: [!GetAtt T.Arn, !Sub "${T.Arn}/index/*"]}
            - {Effect: Deny, Action: dynamodb:DeleteItem, Resource: "*"}
            - Effect: Allow
              Action: scheduler:GetSchedule
              Resource: !Sub ["arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:schedule/${G}/${!x}", {G: !Ref Group}]
  G:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: g}}
    Properties:
      Policies: [{DynamoDBCrudPolicy: {TableName: !Ref T}}]
"#,
        )
        .expect("YAML");
        let local = LocalIdentities::default();
        let table = "arn:aws:dynamodb:us-east-1:123456789012:table/it-x-1-t";
        let mut r = record("f", "dynamodb:Query", &format!("{table}/index/i"));
        let ok = check(&t, &[r.clone()], &local).expect("resolves");
        assert!(ok.passed(), "{:?}", ok.denied);
        r.action = "dynamodb:DeleteItem".into();
        r.resource = table.into();
        assert!(check(&t, &[r], &local).expect("resolves").denied.values().all(|why| why.contains("denied by")));
        let literal = record("f", "scheduler:GetSchedule", "arn:aws:scheduler:us-east-1:123456789012:schedule/g/${x}");
        assert!(check(&t, &[literal], &local).expect("resolves").passed());
        let e = check(&t, &[record("g", "dynamodb:GetItem", table)], &local).expect_err("SAM policy templates");
        assert!(matches!(e, CheckError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn the_log_is_read_back_as_written() {
        let r = record("sender", "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:it-x-1-dlq");
        let line = serde_json::to_string(&r).expect("JSON");
        assert_eq!(read_log(&format!("{line}\n\n{line}\n")).expect("log"), vec![r.clone(), r]);
        assert!(matches!(read_log("{not json"), Err(CheckError::Log { line: 1, .. })));
    }
}
