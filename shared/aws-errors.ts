/** The name of an AWS SDK error, for messages and for telling one failure from another. */
export function awsErrorName(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { name, Code } = error as { name?: unknown; Code?: unknown };
  // The modelled error name (QueueDoesNotExist) reads better than a query-compatible Code
  // (AWS.SimpleQueueService.NonExistentQueue); Code is for errors the SDK does not model.
  if (typeof name === 'string' && name !== 'Error' && name !== 'Unknown') return name;
  return typeof Code === 'string' ? Code : undefined;
}
