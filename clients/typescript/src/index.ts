export * from "./client.js";
export * from "./profile/registry.js";
export * from "./promptVersion.js";
export * from "./signals.js";
