// The layout already holds the page the browser is on (web/page_shell.page_path): ask the server for a
// page only when the URL names another one (navigation, or a layout that could not tell).
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  shell: {
    wanted: function (pathname, shown) {
      var path = pathname || "/";
      return path === shown ? window.dash_clientside.no_update : path;
    }
  }
});
