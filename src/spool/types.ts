// Shapes of what the spool stores, shared by every source (SMTP, IMAP, Graph) and by delivery.
export interface TlsInfo {
  protocol: string;
  cipher: string;
}

export interface Envelope {
  mailFrom: string;
  rcptTo: string[];
  remoteAddress: string | null;
  helo: string | null;
  tls: TlsInfo | null;
}

export interface Recipient {
  address: string;
  key: string | null;
}

/** 'dropped': finished without calling the webhook because the route drops automatic messages (last_error says why) */
export type DeliveryStatus = 'pending' | 'delivering' | 'delivered' | 'dead' | 'dropped';

export interface PlannedDelivery {
  route: string;
  recipients: Recipient[];
  /** 'delivered' for routes that only keep the message (sink); default 'pending' */
  status?: 'pending' | 'delivered';
}

export interface StoredMessage {
  id: string;
  receivedAt: number;
  source: string;
  envelope: Envelope;
  size: number;
  dedupeKey: string | null;
  meta: Record<string, unknown> | null;
}

export interface DeliveryRow {
  id: string;
  messageId: string;
  route: string;
  recipients: Recipient[];
  status: DeliveryStatus;
  attempts: number;
  nextAttemptAt: number;
  leaseToken: string | null;
  lastStatusCode: number | null;
  lastError: string | null;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
}
