// The registry of payload formats, by the name used in a route's webhook.format.
import type { WebhookFormat } from '../../config/schema.js';
import { jsonFormat } from './json.js';
import type { PayloadFormat } from './types.js';

export const FORMATS: Record<WebhookFormat, PayloadFormat> = {
  json: jsonFormat,
};
