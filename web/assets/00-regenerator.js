// A minimal regeneratorRuntime (mark, wrap) for the one compiled async helper in Dash's bundles (their
// lazy-component loader), loaded instead of @babel/polyfill (see web/page_shell.py). A bundle that
// already defines the full runtime keeps its own. Generators with try/catch blocks (regenerator's 4th
// wrap argument) are not supported: wrap says so instead of running them wrongly.
(function () {
  if (typeof window.regeneratorRuntime !== "undefined") return;
  var CONTINUE = {};
  function Context() {
    this.prev = 0; this.next = 0; this.sent = undefined; this.done = false; this.rval = undefined;
  }
  Context.prototype.stop = function () { this.done = true; return this.rval; };
  Context.prototype.abrupt = function (type, arg) {
    if (type === "throw") throw arg;
    if (type === "return") { this.rval = arg; this.next = "end"; } else { this.next = arg; }  // break/continue
    return CONTINUE;
  };
  var GeneratorPrototype = {};
  function mark(fn) {
    fn.prototype = Object.create(GeneratorPrototype);
    return fn;
  }
  function wrap(inner, outer, self, tryLocs) {
    if (tryLocs && tryLocs.length) throw new Error("00-regenerator.js: generators with try/catch are not supported");
    var gen = Object.create((outer && outer.prototype) || GeneratorPrototype);
    var ctx = new Context();
    var finished = false;
    function resume(method, arg) {
      if (finished || method !== "next") {
        finished = true;
        if (method === "throw") throw arg;  // no try/catch in the body: the error leaves the generator
        return { value: method === "return" ? arg : undefined, done: true };
      }
      ctx.sent = arg;
      for (;;) {
        var value;
        try { value = inner.call(self, ctx); } catch (e) { finished = true; throw e; }
        if (value === CONTINUE) continue;
        finished = ctx.done;
        return { value: value, done: ctx.done };
      }
    }
    gen.next = function (a) { return resume("next", a); };
    gen["throw"] = function (e) { return resume("throw", e); };
    gen["return"] = function (v) { return resume("return", v); };
    gen[Symbol.iterator] = function () { return this; };
    return gen;
  }
  window.regeneratorRuntime = { mark: mark, wrap: wrap };
})();
