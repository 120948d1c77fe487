//! Procedural macros behind `#[rustray::remote]` and `#[rustray::actor]`.
//!
//! Users reach these through the re-exports in the `rustray` crate; all
//! generated code names the runtime by absolute `::rustray::...` paths (the
//! hidden glue lives in `rustray::__private`), so this crate has no runtime
//! dependency of its own.
//!
//! # `#[rustray::remote]` on a free function
//!
//! The function is kept unchanged so it can still be called locally. Next to
//! it the macro emits a module with the same name and visibility. Functions
//! live in the value namespace and modules in the type namespace, so `add(..)`
//! and `add::remote(..)` coexist and the remote API reads like Ray's
//! `add.remote(..)`. The module contains:
//!
//! * `remote(args..) -> Result<ObjectRef<R>>`: submits the task with default
//!   options (an error only when there is no runtime to submit to).
//!   Each parameter is `impl IntoArg<T>`, so callers pass either a value or an
//!   `ObjectRef<T>` (Ray's "pass a ref to a dependent task").
//! * `options() -> Options` and a by-value builder `Options` (`num_cpus`,
//!   `num_gpus`, `resource`, `max_retries`, `remote`).
//! * A private `__invoke` that decodes arguments, calls the function and
//!   encodes its result(s), registered with `inventory` under
//!   `module_path!()` of the generated module (`crate::path::add`). Workers run
//!   the same binary as the driver, so that name resolves to the same code in
//!   every process without any explicit registration call.
//!
//! `#[rustray::remote(num_returns = N)]` requires a tuple of N elements as the
//! return type; each element becomes its own object and `remote` returns a
//! tuple of N `ObjectRef`s.
//!
//! # `#[rustray::actor]` on an inherent impl block
//!
//! The impl is kept unchanged. `fn new(..) -> Self` is the constructor and
//! every `pub` method taking `&self`/`&mut self` becomes remotely callable;
//! anything else stays local. The macro emits:
//!
//! * `__rustray_<Type>_Methods`, the struct an `ActorHandle<Type>` derefs to,
//!   with one method per remote method returning `ObjectRef<R>`.
//! * `impl ActorClass for Type` (registered name, constructor argument shape:
//!   `()` for none, `T` for one, a tuple for several).
//! * `Type::remote(ctor args..)` and `Type::options()`.
//! * Type-erased construct/dispatch functions registered with `inventory`
//!   under the same name as `ActorClass::NAME`.
//!
//! `#[rustray::method(num_returns = N)]` on a remote method (read and
//! removed by `#[rustray::actor]`) makes each element of its returned
//! N-tuple a separate object, as `num_returns` does for functions.
//!
//! Unsupported signatures (generics, `async`, `impl Trait`, borrowed
//! arguments, trait impls, ...) are rejected with a `compile_error!` pointing
//! at the offending tokens rather than producing type errors inside generated
//! code. The user's item is still emitted alongside the error so one mistake
//! does not cascade into unrelated "not found" errors.
//!
//! Note for code inside the `rustray` crate itself: the expansion names
//! `::rustray`, which resolves there only with `extern crate self as rustray;`.

use proc_macro::TokenStream;

mod actor;
mod remote;
mod util;

/// Makes a free function callable as a rustray task via `name::remote(..)`.
///
/// Optional argument: `num_returns = N` for functions returning an N-tuple
/// whose elements should become separate objects.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    remote::expand(attr.into(), item.into()).into()
}

/// Options of one actor method, read by `#[rustray::actor]` on its impl
/// block (Ray's `@ray.method`): `#[rustray::method(num_returns = N)]` on a
/// method returning an N-tuple makes each element its own object, and the
/// handle's method returns a tuple of N `ObjectRef`s. Anywhere else it is
/// an error.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let err = syn::Error::new(
        proc_macro2::Span::call_site(),
        "#[rustray::method] goes on a method inside an impl block marked #[rustray::actor] (put #[rustray::actor] on the impl)",
    );
    util::with_error(item2, err).into()
}

/// Turns a type's inherent impl block into a rustray actor class: creates
/// `Type::remote(..)`/`Type::options()` and makes each `pub` `&self`/`&mut self`
/// method callable through `ActorHandle<Type>`.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    actor::expand(attr.into(), item.into()).into()
}
