// The recommender's profile feature registry: every feature it computes and ships to tipml in
// `profile_features`. tipml's Python mirror is `src/tipml/features/profile_schema.py`; a test
// on each side fails when the two drift. Keep one feature per line.

export type Dtype = "float" | "int" | "str" | "bool";

export interface ProfileFeature {
  readonly name: string;
  readonly dtype: Dtype;
  readonly description: string;
  readonly min?: number;
  readonly max?: number;
  readonly choices?: readonly string[];
}

export const CATEGORIES = ["sleep", "focus", "movement", "mindfulness", "nutrition", "stress", "social"] as const;

export const PROFILE_FEATURES: readonly ProfileFeature[] = [
  { name: "completion_rate", dtype: "float", min: 0, max: 1, description: "Share of shown tips completed, 30 d." },
  { name: "dismiss_rate", dtype: "float", min: 0, max: 1, description: "Share of shown tips dismissed, 30 d." },
  { name: "preferred_hour", dtype: "int", min: 0, max: 23, description: "Local hour the user is usually active." },
  { name: "tip_volume_7d", dtype: "int", min: 0, max: 10000, description: "Tips shown to the user in the last 7 days." },
  { name: "streak_days", dtype: "int", min: 0, max: 36500, description: "Consecutive days with at least one completion." },
  { name: "days_since_signup", dtype: "int", min: 0, max: 36500, description: "Account age in days." },
  { name: "avg_session_minutes", dtype: "float", min: 0, max: 1440, description: "Mean app session length, 7 d." },
  { name: "favorite_category", dtype: "str", choices: CATEGORIES, description: "Category the user engages with most." },
  { name: "timezone", dtype: "str", description: "IANA time zone of the user, e.g. Europe/Berlin." },
  { name: "notifications_enabled", dtype: "bool", description: "Whether push notifications are on." },
];

export type ProfileFeatures = Partial<{
  completion_rate: number;
  dismiss_rate: number;
  preferred_hour: number;
  tip_volume_7d: number;
  streak_days: number;
  days_since_signup: number;
  avg_session_minutes: number;
  favorite_category: (typeof CATEGORIES)[number];
  timezone: string;
  notifications_enabled: boolean;
}>;
