import { $ } from "./util.js";

export const API = "../api/v1";
export const TOKEN_KEY = "meshgate.token";

// The gateway's API, with the signed-in credential and conditional reads; signing in.

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export const cache = new Map(); // url -> {etag, data}

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function request(method, path, body) {
  const url = `${API}${path}`;
  const headers = { Accept: "application/json", ...authHeaders() };
  const cached = method === "GET" ? cache.get(url) : undefined;
  if (cached) headers["If-None-Match"] = cached.etag;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  if (res.status === 304 && cached) return { data: cached.data, changed: false };
  if (res.status === 401) throw new Unauthorized();
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text }; }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  const etag = res.headers.get("ETag");
  if (method === "GET" && etag) cache.set(url, { etag, data });
  return { data, changed: true };
}

export const get = (path) => request("GET", path);

// Several reads at once; `changed` when any of them changed. An optional read that the
// gateway does not answer (404) or the caller may not make (403) gives null.
export async function getAll(paths, optional = []) {
  const results = await Promise.all(paths.map(async (p) => {
    try {
      return await get(p);
    } catch (e) {
      if (optional.includes(p) && e instanceof ApiError && [403, 404].includes(e.status)) {
        return { data: null, changed: false };
      }
      throw e;
    }
  }));
  return { data: results.map((r) => r.data), changed: results.some((r) => r.changed) };
}

// Sign-in

export let signingIn = null;

export function signIn(message) {
  const dialog = $("#signin");
  $("#signin-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("#token").focus();
  if (!signingIn) {
    signingIn = new Promise((resolve) => {
      $("#signin-form").onsubmit = (ev) => {
        ev.preventDefault();
        const token = $("#token").value.trim();
        if (!token) return;
        sessionStorage.setItem(TOKEN_KEY, token);
        cache.clear();
        dialog.close();
        $("#token").value = "";
        signingIn = null;
        resolve();
      };
    });
  }
  return signingIn;
}

export function showSignOut() {
  $("#signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
}
