//! The HTTP bindings of the served RPCs, read at start from the `google.api.http` option of each
//! method in the descriptor set (build.rs keeps extension options in it), and the routing of a
//! request's method and path to one of them.

use anyhow::{Context as _, bail};
use http::Method;
use prost::Message as _;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor, Value};

use super::template::{PathTemplate, Variable};

/// google.api.HttpRule, as vendored in proto/google/api/http.proto (the fields we read).
#[derive(Clone, PartialEq, prost::Message)]
struct HttpRule {
    #[prost(string, tag = "2")]
    get: String,
    #[prost(string, tag = "3")]
    put: String,
    #[prost(string, tag = "4")]
    post: String,
    #[prost(string, tag = "5")]
    delete: String,
    #[prost(string, tag = "6")]
    patch: String,
    #[prost(message, optional, tag = "8")]
    custom: Option<CustomHttpPattern>,
    #[prost(string, tag = "7")]
    body: String,
    #[prost(string, tag = "12")]
    response_body: String,
    #[prost(message, repeated, tag = "11")]
    additional_bindings: Vec<HttpRule>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CustomHttpPattern {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    path: String,
}

/// Where a request's body goes.
#[derive(Debug, Clone)]
pub enum BodyTarget {
    /// No body: every field not in the path is a query parameter.
    None,
    /// `body: "*"`: the whole request message, less the path's fields.
    Whole,
    /// `body: "<field>"`: that top-level field.
    Field(FieldDescriptor),
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Binding {
    pub http_method: Method,
    pub template: PathTemplate,
    pub body: BodyTarget,
    /// `response_body`: the top-level response field answered instead of the whole message.
    pub response_body: Option<FieldDescriptor>,
    pub rpc: MethodDescriptor,
    /// The gRPC path, `/package.Service/Method`.
    pub grpc_path: String,
}

impl Binding {
    /// Whether this binding's RPC streams its answer (answered as newline-delimited JSON).
    pub fn is_server_streaming(&self) -> bool {
        self.rpc.is_server_streaming()
    }
}

/// Every binding of the served services, most specific first.
#[derive(Debug, Clone)]
pub struct Router {
    bindings: Vec<Binding>,
}

/// What a request's method and path lead to.
pub enum Route<'a> {
    Found(&'a Binding, Vec<(&'a Variable, String)>),
    /// The path is known but not with this method: the methods it has.
    WrongMethod(Vec<Method>),
    NotFound,
}

impl Router {
    /// The bindings of every method of `services` (full names) that carries a google.api.http
    /// option; methods without one are gRPC-only. A malformed rule stops the service at start.
    pub fn from_pool(pool: &DescriptorPool, services: &[&str]) -> anyhow::Result<Self> {
        let Some(extension) = pool.get_extension_by_name("google.api.http") else {
            bail!("the descriptor set lacks google/api/annotations.proto: no HTTP bindings");
        };
        let mut bindings = Vec::new();
        for name in services {
            let service =
                pool.get_service_by_name(name).with_context(|| format!("service {name} not in the descriptors"))?;
            for rpc in service.methods() {
                if rpc.is_client_streaming() {
                    continue;
                }
                let options = rpc.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                    continue;
                };
                let rule = HttpRule::decode(rule.encode_to_vec().as_slice())
                    .with_context(|| format!("{}: google.api.http does not decode", rpc.full_name()))?;
                let grpc_path = format!("/{}/{}", service.full_name(), rpc.name());
                bindings.push(binding(&rule, &rpc, &grpc_path)?);
                for additional in &rule.additional_bindings {
                    bindings.push(binding(additional, &rpc, &grpc_path)?);
                }
            }
        }
        // A verb is the most specific part of a path, then literal segments.
        bindings.sort_by_key(|b| std::cmp::Reverse((b.template.has_verb(), b.template.literal_count())));
        Ok(Self { bindings })
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The binding of `method` and `path`.
    pub fn route(&self, method: &Method, path: &str) -> Route<'_> {
        let mut allowed: Vec<Method> = Vec::new();
        for binding in &self.bindings {
            let Some(variables) = binding.template.matches(path) else {
                continue;
            };
            if binding.http_method == *method {
                return Route::Found(binding, variables);
            }
            if !allowed.contains(&binding.http_method) {
                allowed.push(binding.http_method.clone());
            }
        }
        if allowed.is_empty() { Route::NotFound } else { Route::WrongMethod(allowed) }
    }
}

fn binding(rule: &HttpRule, rpc: &MethodDescriptor, grpc_path: &str) -> anyhow::Result<Binding> {
    let name = rpc.full_name();
    let (http_method, path) = if !rule.get.is_empty() {
        (Method::GET, rule.get.as_str())
    } else if !rule.put.is_empty() {
        (Method::PUT, rule.put.as_str())
    } else if !rule.post.is_empty() {
        (Method::POST, rule.post.as_str())
    } else if !rule.delete.is_empty() {
        (Method::DELETE, rule.delete.as_str())
    } else if !rule.patch.is_empty() {
        (Method::PATCH, rule.patch.as_str())
    } else if let Some(custom) = &rule.custom {
        let method = Method::from_bytes(custom.kind.as_bytes()).with_context(|| format!("{name}: custom kind"))?;
        (method, custom.path.as_str())
    } else {
        bail!("{name}: google.api.http names no method and path");
    };
    let template = PathTemplate::parse(path).with_context(|| name.to_owned())?;
    let input = rpc.input();
    for variable in template.variables() {
        let mut message = input.clone();
        let last = variable.field_path.len() - 1;
        for (i, part) in variable.field_path.iter().enumerate() {
            let field = message
                .get_field_by_name(part)
                .with_context(|| format!("{name}: path variable {} names no field", variable.field_path.join(".")))?;
            match field.kind() {
                Kind::Message(inner) if i < last && !field.is_list() => message = inner,
                Kind::Message(_) => {
                    bail!("{name}: path variable {} is not a scalar field", variable.field_path.join("."))
                }
                _ if i < last || field.is_list() => {
                    bail!("{name}: path variable {} is not a singular scalar field", variable.field_path.join("."))
                }
                _ => {}
            }
        }
    }
    let body = match rule.body.as_str() {
        "" => BodyTarget::None,
        "*" => BodyTarget::Whole,
        field => BodyTarget::Field(
            input.get_field_by_name(field).with_context(|| format!("{name}: body field {field} does not exist"))?,
        ),
    };
    let response_body = match rule.response_body.as_str() {
        "" => None,
        field => Some(
            rpc.output()
                .get_field_by_name(field)
                .with_context(|| format!("{name}: response_body field {field} does not exist"))?,
        ),
    };
    Ok(Binding { http_method, template, body, response_body, rpc: rpc.clone(), grpc_path: grpc_path.to_owned() })
}
